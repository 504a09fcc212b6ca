"""vl3fast.reference against transformers' VideoLLaMA3 code, side by side on the same random inputs.

Integers and masks must be identical; floats agree to fp32 round-off (or exactly where the same
torch ops run in the same order).
"""
import pytest
import torch

from vl3fast import reference

from ..conftest import GRID_CASES, hf_modeling


def _grid(name):
    g, m = GRID_CASES[name]
    return torch.tensor(g), torch.tensor(m)


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
@pytest.mark.parametrize("heads, head_dim", [(4, 72), (2, 64)])
def test_attention_matches_transformers_vision_attention(attn_impl, heads, head_dim):
    hf = hf_modeling()
    config = hf.VideoLlama3VisionConfig(hidden_size=heads * head_dim, num_attention_heads=heads)
    config._attn_implementation = attn_impl
    attention = hf.VideoLlama3VisionAttention(config).eval()
    rotary = hf.VideoLlama3VisionRotaryEmbedding(config)
    grid_thw, merge_sizes = _grid("mixed")
    pos_hw, cu_seqlens = reference.rope2d_position_ids(grid_thw, merge_sizes)
    x = torch.randn(pos_hw.shape[0], heads * head_dim)
    with torch.no_grad():
        theirs, _ = attention(x, cu_seqlens=cu_seqlens, position_embeddings=rotary(x, pos_hw.long()))
        T = x.shape[0]
        q, k, v = (proj(x).view(T, heads, head_dim) for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
        ours = attention.out_proj(reference.rope2d_attention(q, k, v, cu_seqlens, pos_hw).reshape(T, -1))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _hf_compression_mask(pixel_values, grid_thw, merge_sizes, **kwargs):
    from transformers.models.video_llama_3.video_processing_video_llama_3 import VideoLlama3VideoProcessor

    return VideoLlama3VideoProcessor()._get_compression_mask(pixel_values, grid_thw, merge_sizes, **kwargs)


def _static_with_changes(t, h, w, m, noise):
    """A video whose frames repeat frame 0 except for noise and one changing block per frame."""
    base = torch.rand(1, h * w, 588) * 2 - 1
    frames = base.repeat(t, 1, 1) + noise * torch.randn(t, h * w, 588)
    for i in range(1, t):
        frames[i, (i * m * m) % (h * w) : (i * m * m) % (h * w) + m * m] += 0.5
    return frames.reshape(t * h * w, 588)


@pytest.mark.parametrize("noise", [0.0, 1e-4, 4e-4, 1e-2])
@pytest.mark.parametrize("threshold, min_tokens", [(0.1, 1), (0.05, 3)])
def test_keep_mask_matches_transformers(noise, threshold, min_tokens):
    videos = [(4, 6, 10, 2), (3, 7, 5, 1), (2, 4, 4, 2)]
    pixels = torch.cat([_static_with_changes(t, h, w, m, noise) for t, h, w, m in videos])
    grid_thw = torch.tensor([v[:3] for v in videos])
    merge_sizes = torch.tensor([v[3] for v in videos])
    ours = reference.frame_keep_mask(pixels, grid_thw, merge_sizes, threshold=threshold, min_tokens=min_tokens)
    theirs = _hf_compression_mask(pixels, grid_thw, merge_sizes, threshold=threshold, min_tokens=min_tokens)
    assert ours.dtype == torch.bool
    assert torch.equal(ours, theirs)
    if noise == 0.0:
        assert 0 < ours.sum() < ours.numel()  # the case prunes something and keeps something


def test_keep_mask_images_and_single_frames_fully_kept():
    grid_thw, merge_sizes = torch.tensor([[1, 4, 6], [1, 2, 2]]), torch.tensor([2, 1])
    pixels = torch.randn(int(grid_thw.prod(1).sum()), 588)
    ours = reference.frame_keep_mask(pixels, grid_thw, merge_sizes)
    assert ours.all() and ours.numel() == 6 + 4
    assert torch.equal(ours, _hf_compression_mask(pixels, grid_thw, merge_sizes))


@pytest.mark.parametrize("name", sorted(GRID_CASES))
def test_downsample_matches_transformers_pixel_unshuffle(name):
    grid_thw, merge_sizes = _grid(name)
    x = torch.randn(int(grid_thw.prod(1).sum()), 24)
    theirs = hf_modeling().VideoLlama3VisionModel.pixel_unshuffle(None, x, grid_thw, merge_sizes)
    ours = reference.downsample(x, grid_thw, merge_sizes)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_downsample_is_block_mean_for_merge_2():
    grid_thw, merge_sizes = torch.tensor([[2, 4, 6]]), torch.tensor([2])
    x = torch.randn(48, 5)
    block_mean = x.view(-1, 4, 5).mean(1)
    torch.testing.assert_close(reference.downsample(x, grid_thw, merge_sizes), block_mean, rtol=1e-6, atol=1e-6)


def test_rope_frequencies_match_transformers():
    hf = hf_modeling()
    for heads, head_dim in [(16, 72), (2, 64), (1, 128)]:
        config = hf.VideoLlama3VisionConfig(hidden_size=heads * head_dim, num_attention_heads=heads)
        assert torch.equal(reference.rope2d_inv_freq(head_dim), hf.VideoLlama3VisionRotaryEmbedding(config).inv_freq)
