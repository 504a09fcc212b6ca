"""ZeRO-3 safety of the packed training forward, in one process (gloo, DeepSpeed's shm-op JIT skipped;
build_notes §6): forward and backward match plain torch, every partitioned parameter is gathered (each
layer is called as a module), and a text-only batch runs the encoder exactly once (its x0 dummy item)."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("deepspeed")

from vl3fast.models.videollama3 import state_dict_adapter as adapter  # noqa: E402
from vl3fast.training import collate  # noqa: E402

from tests.models.tiny_vl3 import rel_err  # noqa: E402


def zero3(model):
    import deepspeed

    from vl3fast.training import distributed

    distributed.init(use_deepspeed=True)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    return engine


def test_zero3_forward_backward_match_plain_torch(models, encoded):
    from deepspeed import zero
    from deepspeed.utils import safe_get_full_grad

    _, ours = models
    plain = copy.deepcopy(ours)
    engine = zero3(ours)
    params = dict(engine.module.named_parameters())
    assert all(p.ds_status is not None and p.numel() == 0 for p in params.values())  # partitioned away
    calls = []
    engine.module.vision.register_forward_pre_hook(lambda *a: calls.append(1))
    for names in (["img", "vid", "multi"], ["text", "text2"]):  # media, then a text-only batch (x0 dummy)
        batch = collate([encoded[k] for k in names])
        calls.clear()
        loss, n = engine(packed=batch)
        engine.backward(loss)
        assert len(calls) == 1
        ref, n_ref = plain(packed=batch)
        ref.backward()
        assert n == n_ref and rel_err(loss.detach(), ref.detach()) < 1e-6
        for k, p in plain.named_parameters():
            got = safe_get_full_grad(params[k])
            assert got is not None, k  # every parameter took part, the encoder's too on the text-only batch
            if bool(p.grad.any()):
                assert rel_err(got, p.grad) < 1e-5, k
            else:
                assert not bool(got.any()), k
        engine.step()
        plain.zero_grad()
        with torch.no_grad(), zero.GatheredParameters(list(params.values())):
            for k, p in plain.named_parameters():  # the plain copy follows the engine's weights
                p.copy_(params[k])
    with torch.no_grad(), zero.GatheredParameters(list(params.values())):
        exported = adapter.export_tensors({k: p.detach().clone() for k, p in params.items()}, "native")
    assert not any(".qkv." in k for k in exported) and any(".self_attn.v_proj.bias" in k for k in exported)
