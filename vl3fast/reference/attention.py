"""Reference packed attention: non-causal softmax attention inside each cu_seqlens segment."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .rope import apply_rope2d


def packed_attention(q_THD, k_THD, v_THD, cu_seqlens, *, scale: float | None = None) -> torch.Tensor:
    """One SDPA call per segment (as transformers' non-flash path does); computes in the input dtype."""
    bounds = cu_seqlens.tolist()
    out = torch.empty_like(q_THD, memory_format=torch.contiguous_format)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            continue
        q, k, v = (t[start:end].transpose(0, 1) for t in (q_THD, k_THD, v_THD))  # [H, L, D]
        out[start:end] = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(0, 1)
    return out


def rope2d_attention(q_THD, k_THD, v_THD, cu_seqlens, pos_hw, *, theta: float = 10000.0, scale=None):
    """2D RoPE on q and k (in float32 or float64, as transformers), then packed_attention."""
    q = apply_rope2d(q_THD, pos_hw, theta)
    k = apply_rope2d(k_THD, pos_hw, theta)
    return packed_attention(q, k, v_THD, cu_seqlens, scale=scale)


def rope2d_attention_dense_mask(q_THD, k_THD, v_THD, cu_seqlens, pos_hw, *, theta: float = 10000.0, scale=None):
    """The official VideoLLaMA3 `sdpa` path: 2D RoPE, then one SDPA call over the whole packed sequence
    with a dense block-diagonal boolean mask `[1, T, T]` (True = attend).  O(T^2) memory: a baseline only."""
    q = apply_rope2d(q_THD, pos_hw, theta)
    k = apply_rope2d(k_THD, pos_hw, theta)
    T = q.shape[0]
    segment = torch.repeat_interleave(
        torch.arange(cu_seqlens.numel() - 1, device=q.device), (cu_seqlens[1:] - cu_seqlens[:-1]).long(), output_size=T
    )
    mask = (segment[:, None] == segment[None, :])[None]  # [1, T, T]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v_THD.transpose(0, 1), attn_mask=mask, scale=scale
    )
    return out.transpose(0, 1)
