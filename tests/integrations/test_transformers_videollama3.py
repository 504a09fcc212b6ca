"""use_vl3fast_attention / restore_attention on transformers' VideoLLaMA3 (tiny random configs)."""
from __future__ import annotations

import pytest
import torch

from vl3fast.integrations.transformers_videollama3 import restore_attention, use_vl3fast_attention

from ..conftest import hf_modeling

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = torch.tensor([[1, 6, 10], [3, 4, 4], [1, 5, 3]])
MERGE = torch.tensor([2, 2, 1])


def _vision_model(heads, head_dim):
    hf = hf_modeling()
    config = hf.VideoLlama3VisionConfig(
        hidden_size=heads * head_dim, num_attention_heads=heads, num_hidden_layers=2, intermediate_size=64,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return hf.VideoLlama3VisionModel(config).eval()


def _pixels(model):
    patches = int(GRID.prod(dim=1).sum())
    return torch.randn(patches, 3 * model.config.patch_size**2, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("heads, head_dim", [(2, 72), (3, 64)])
def test_vision_outputs_identical_and_restore(heads, head_dim):
    model = _vision_model(heads, head_dim)
    pixels = _pixels(model)
    with torch.no_grad():
        theirs = model(pixels, GRID, MERGE).last_hidden_state
        use_vl3fast_attention(model)
        assert all("forward" in vars(m) for m in model.modules() if type(m).__name__ == "VideoLlama3VisionAttention")
        ours = model(pixels, grid_thw=GRID, merge_sizes=MERGE).last_hidden_state
        use_vl3fast_attention(model)  # idempotent
        again = model(pixels, GRID, MERGE).last_hidden_state
        restore_attention(model)
        restored = model(pixels, GRID, MERGE).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(again, ours, rtol=0, atol=0)
    torch.testing.assert_close(restored, theirs, rtol=0, atol=0)
    assert not any("forward" in vars(m) for m in model.modules())
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_gradients_match():
    model = _vision_model(2, 72)
    pixels = _pixels(model)
    model(pixels, GRID, MERGE).last_hidden_state.square().sum().backward()
    theirs = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    use_vl3fast_attention(model)
    model(pixels, GRID, MERGE).last_hidden_state.square().sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name], rtol=1e-4, atol=1e-5, msg=name)


def test_attention_outside_vision_forward_runs_transformers_path():
    """Without the positions its tower's hook passes down, a swapped attention runs transformers' forward."""
    model = use_vl3fast_attention(_vision_model(2, 72))
    attention = model.encoder.layers[0].self_attn
    x, cu = torch.randn(4, 144), torch.tensor([0, 4], dtype=torch.int32)
    cos, sin = model.rotary_pos_emb(x, torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]))
    with torch.no_grad():
        ours, _ = attention(x, cu_seqlens=cu, position_embeddings=(cos, sin))
        restore_attention(model)
        theirs, _ = attention(x, cu_seqlens=cu, position_embeddings=(cos, sin))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_full_model_and_no_vision_model():
    hf = hf_modeling()
    vision = dict(hidden_size=144, num_attention_heads=2, num_hidden_layers=1, intermediate_size=32)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=32, vocab_size=64)
    config = hf.VideoLlama3Config(vision_config=vision, text_config=text)
    config.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = hf.VideoLlama3ForConditionalGeneration(config).eval()
    pixels = torch.randn(int(GRID.prod(dim=1).sum()), 3 * config.vision_config.patch_size**2)
    with torch.no_grad():
        theirs = model.model.vision_model(pixels, GRID, MERGE).last_hidden_state
        use_vl3fast_attention(model)
        ours = model.model.vision_model(pixels, GRID, MERGE).last_hidden_state
        restore_attention(model)
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="no VideoLlama3VisionModel"):
        use_vl3fast_attention(torch.nn.Linear(2, 2))
