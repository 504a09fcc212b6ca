"""Packed (padding-free) batches through apply_vl3fast(packing=True), and the `vl3fast_flash` attention
implementation selected with attn_implementation= (tiny random transformers models)."""
from __future__ import annotations

import pytest
import torch

import vl3fast
from vl3fast.integrations import transformers_attention
from vl3fast.integrations.transformers_attention import ATTENTION_NAME, register_vl3fast_attention

from . import tiny_vlms as tv
from .test_apply_vl3fast import run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", tv.FAMILIES)
def test_packed_batch_equals_padded_batch(family):
    """Same samples, one packed row vs a padded batch of two: same loss and gradients (fp32, 1e-5)."""
    model = tv.build(family)
    padded = tv.padded_batch(family, model.config)
    packed = tv.packed_batch(padded)
    loss_padded = model(**padded).loss.item()
    stock_padded = run(model, padded)
    vl3fast.apply_vl3fast(model)
    loss_packed = model(**packed).loss.item()
    ours_packed = run(model, packed)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5, abs=0)
    for name, grad in stock_padded[1].items():
        torch.testing.assert_close(ours_packed[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["video_llama_3", "qwen2_5_vl"])
def test_stock_transformers_gets_packed_batches_wrong(family):
    """Why packing=True exists: without it the samples attend to each other (the default use_cache=True
    disables transformers' packed mask) and Qwen's 3D positions run across samples."""
    model = tv.build(family)
    padded = tv.padded_batch(family, model.config)
    packed = tv.packed_batch(padded)
    with torch.no_grad():
        expected = model(**padded).loss.item()
        stock = model(**packed).loss.item()
        vl3fast.apply_vl3fast(model, attention=False)
        fixed = model(**packed).loss.item()
    assert fixed == pytest.approx(expected, rel=1e-5)
    assert abs(stock - expected) > 1e-3


def test_packed_mrope_positions_are_per_sample_get_rope_index():
    """The [4, 1, T] positions: restarting text positions, then each sample's own get_rope_index rows."""
    from vl3fast.integrations.transformers_packing import packed_mrope_position_ids, packed_sequence_ids

    model = tv.build("qwen2_5_vl")
    padded = tv.padded_batch("qwen2_5_vl", model.config)
    packed = tv.packed_batch(padded)
    positions = packed_mrope_position_ids(model.model, packed, packed["position_ids"],
                                          packed_sequence_ids(packed["position_ids"]))
    per_sample, _ = model.model.get_rope_index(padded["input_ids"], padded["mm_token_type_ids"],
                                               image_grid_thw=padded["image_grid_thw"],
                                               video_grid_thw=padded["video_grid_thw"],
                                               attention_mask=padded["attention_mask"])
    keep = padded["attention_mask"].bool()
    assert positions.shape == (4, 1, packed["input_ids"].shape[1])
    torch.testing.assert_close(positions[0], packed["position_ids"], rtol=0, atol=0)
    torch.testing.assert_close(positions[1:, 0], per_sample[:, keep], rtol=0, atol=0)
    # Without mm_token_type_ids they are derived from the placeholder ids: same positions.
    no_types = {k: v for k, v in packed.items() if k != "mm_token_type_ids"}
    again = packed_mrope_position_ids(model.model, no_types, packed["position_ids"],
                                      packed_sequence_ids(packed["position_ids"]))
    torch.testing.assert_close(again, positions, rtol=0, atol=0)


def test_padded_batches_and_generation_pass_through():
    model = tv.build("qwen2_5_vl").eval()
    padded = tv.padded_batch("qwen2_5_vl", model.config)
    with torch.no_grad():
        before = model(**padded).logits
        vl3fast.apply_vl3fast(model, attention=False)
        after = model(**padded).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["video_llama_3", "qwen2_5_vl"])
def test_vl3fast_flash_selected_per_sub_config(family, monkeypatch):
    """attn_implementation={"vision_config": "vl3fast_flash", ...}: transformers passes cu_seq_lens and
    calls our varlen kernel once per layer; outputs equal SDPA's."""
    calls = []
    real = transformers_attention.varlen_attention
    monkeypatch.setattr(transformers_attention, "varlen_attention",
                        lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    register_vl3fast_attention()
    model = tv.build(family).eval()
    batch = tv.padded_batch(family, model.config)
    with torch.no_grad():
        theirs = model(**batch).logits
        model.set_attn_implementation({"vision_config": ATTENTION_NAME, "text_config": "sdpa"})
        assert model.config.vision_config._attn_implementation == ATTENTION_NAME
        ours = model(**batch).logits
    assert len(calls) == 4 and all(cu.numel() > 2 for cu in calls), "one packed call per layer and tower call"
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-5)


def test_vl3fast_flash_refuses_causal_calls():
    q = torch.randn(1, 2, 5, 16)
    module = torch.nn.Module()
    module.is_causal = True
    with pytest.raises(NotImplementedError, match="vision_config"):
        transformers_attention.vl3fast_flash_attention_forward(module, q, q, q, None)
    module.is_causal = False
    out, weights = transformers_attention.vl3fast_flash_attention_forward(module, q, q, q, None, scaling=0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(q, q, q, scale=0.25).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-6)
    assert weights is None
