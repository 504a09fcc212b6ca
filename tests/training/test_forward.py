"""The packed training forward: equal to transformers' VideoLlama3ForConditionalGeneration (loss and
gradients), packed == unpacked, samples isolated, one encoder call, every layer called as a module,
gradient checkpointing, and the qkv split of exports written from named_parameters."""
from __future__ import annotations

import pytest
import torch

from vl3fast.models.videollama3 import state_dict_adapter as adapter
from vl3fast.training import collate

from ._fixtures import hf_inputs
from tests.models.tiny_vl3 import rel_err


def grads_as_checkpoint(model) -> dict:
    """Our parameter gradients under transformers-native names (qkv split, patch kernel reshaped)."""
    named = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return adapter.export_tensors(named, "native")


def hf_grads(hf) -> dict:
    return {n: p.grad for n, p in hf.named_parameters() if p.grad is not None}


def hf_loss_sum(hf, enc):
    out = hf(**hf_inputs(enc))
    return out.loss * enc.num_supervised


@pytest.mark.parametrize("variant", ["plain", "hf-swapped", "ours-reference"])
@pytest.mark.parametrize("kind", ["img", "vid", "multi", "text"])
def test_equals_transformers(models, encoded, kind, variant):
    """plain: transformers' own attention vs our fused op; hf-swapped: transformers with vl3fast's attention
    swapped in; ours-reference: our model on the fp32-RoPE + SDPA reference attention."""
    hf, ours = models
    if variant == "hf-swapped":
        from vl3fast.integrations.transformers_videollama3 import use_vl3fast_attention

        use_vl3fast_attention(hf)
    elif variant == "ours-reference":
        ours.attn_backend = "reference"
    enc = encoded[kind]
    if kind == "vid":
        assert not bool(enc.keep_mask.all())  # a pruned video
    ref = hf_loss_sum(hf, enc)
    ref.backward()
    loss, n = ours(packed=collate([enc]))
    loss.backward()
    assert n == enc.num_supervised
    assert rel_err(loss.detach(), ref.detach()) < 1e-5
    want, got = hf_grads(hf), grads_as_checkpoint(ours)
    # text only: transformers skips the encoder, ours runs its x0 dummy item (zero gradients)
    extra = set(got) - set(want)
    assert extra == (set() if kind != "text" else {k for k in got if "vision_model" in k or "projector" in k})
    assert all(not bool(got[k].any()) for k in extra)
    for name in want:
        assert rel_err(got[name], want[name]) < 1e-4, name


@pytest.mark.parametrize("pruning", ["after", "before"])
def test_packed_equals_unpacked(models, encoded, pruning):
    _, ours = models
    ours.pruning = pruning  # before: pruned patches never enter the encoder
    encs = list(encoded.values())
    loss_p, n_p = ours(packed=collate(encs))
    loss_p.backward()
    packed = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    total, n_u = 0.0, 0
    for e in encs:
        loss, n = ours(packed=collate([e]))
        loss.backward()
        total, n_u = total + loss.detach(), n_u + n
    assert n_p == n_u
    assert rel_err(loss_p.detach(), total) < 1e-5
    for name, p in ours.named_parameters():
        assert rel_err(packed[name], p.grad) < 1e-5, name


def test_no_sample_sees_another(models, encoded):
    _, ours = models
    names = ["img", "vid", "text", "mixed"]
    base = [encoded[k] for k in names]
    with torch.no_grad():
        before = ours.forward_packed(collate(base), reduction="none")[0]
        e = encoded["vid"]
        ids = e.input_ids.clone()
        text = (e.labels == -100) & (ids != 5) & (ids != 6)
        ids[text.nonzero()[3:6, 0]] = 42  # user-prompt tokens of the video sample
        perturbed = type(e)(**{**e.__dict__, "pixel_values": e.pixel_values + 0.5, "input_ids": ids})
        after = ours.forward_packed(collate([base[0], perturbed, base[2], base[3]]), reduction="none")[0]
    counts = [x.num_supervised for x in base]
    b_parts, a_parts = before.split(counts), after.split(counts)
    for k, name in enumerate(names):
        if name == "vid":
            assert not torch.equal(a_parts[k], b_parts[k])
        else:
            assert torch.equal(a_parts[k], b_parts[k]), name


class _Calls:
    def __init__(self, module):
        self.n = 0
        module.register_forward_pre_hook(lambda *a: setattr(self, "n", self.n + 1))


@pytest.mark.parametrize("names", [["img", "vid", "multi", "text"], ["text", "text2"]], ids=["mixed", "text-only"])
def test_one_encoder_call_per_forward(models, encoded, names):
    _, ours = models
    calls = _Calls(ours.vision)
    loss, _ = ours(packed=collate([encoded[k] for k in names]))
    loss.backward()
    assert calls.n == 1
    # the text-only batch's dummy item reaches every vision parameter, with a zero gradient
    if names == ["text", "text2"]:
        for name, p in ours.vision.named_parameters():
            assert p.grad is not None and not bool(p.grad.any()), name


def test_every_parameterised_layer_is_called_as_a_module(models, encoded):
    """What ZeRO-3 relies on: a module's parameters are gathered in its own forward hook."""
    _, ours = models
    owners = {m for m in ours.modules() if list(m.parameters(recurse=False))}
    called = set()
    for m in owners:
        m.register_forward_pre_hook(lambda mod, args: called.add(mod))
    ours(packed=collate([encoded[k] for k in ("img", "vid")]))[0].backward()
    lm_head, embed = ours.language_model.lm_head, ours.language_model.get_input_embeddings()
    assert owners - called == set(), sorted(n for n, m in ours.named_modules() if m in owners - called)
    assert lm_head in called and embed in called


def test_gradient_checkpointing_gives_the_same_gradients(models, encoded):
    _, ours = models
    batch = collate([encoded[k] for k in ("img", "vid", "text")])
    loss, _ = ours(packed=batch)
    loss.backward()
    plain = {n: p.grad.clone() for n, p in ours.named_parameters()}
    ours.zero_grad()
    ours.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in ours.language_model.model.layers)
    llm_calls = _Calls(ours.language_model.model.layers[0].self_attn)  # inside the checkpointed forward
    recomputed = []
    orig = torch.utils.checkpoint.checkpoint

    def counting(fn, *a, **k):
        recomputed.append(fn)
        return orig(fn, *a, **k)

    torch.utils.checkpoint.checkpoint = counting
    try:
        loss2, _ = ours(packed=batch)
        loss2.backward()
    finally:
        torch.utils.checkpoint.checkpoint = orig
        ours.gradient_checkpointing_disable()
    assert sum(1 for f in recomputed if f in list(ours.vision.layers)) == len(ours.vision.layers)
    assert llm_calls.n == 2  # forward, then recomputed in backward
    assert not any(layer.gradient_checkpointing for layer in ours.language_model.model.layers)
    assert torch.equal(loss, loss2)
    for name, p in ours.named_parameters():
        assert rel_err(p.grad, plain[name]) < 1e-6, name


def test_export_from_named_parameters_splits_qkv(models, encoded, tmp_path):
    """ZeRO-3's consolidated save walks named_parameters (fused qkv); the export still loads in transformers."""
    from safetensors.torch import save_file
    from transformers import VideoLlama3ForConditionalGeneration

    hf, ours = models
    named = dict(ours.named_parameters())
    assert any(".qkv." in n for n in named)
    tensors = adapter.export_tensors(named, "native")
    assert not any(".qkv." in k for k in tensors) and any("self_attn.q_proj.weight" in k for k in tensors)
    hf.save_pretrained(str(tmp_path / "ref"))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "ref" / "model.safetensors"),
              metadata={"format": "pt"})
    reloaded = VideoLlama3ForConditionalGeneration.from_pretrained(str(tmp_path / "ref")).eval()
    inputs = hf_inputs(encoded["mixed"])
    inputs.pop("labels")
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, hf.eval()(**inputs).logits)
