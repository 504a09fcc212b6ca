"""varlen_attention: packed non-causal attention per cu_seqlens segment, without RoPE (q, k already rotated).

For callers that hand over rotated q and k and no positions, such as transformers' attention registry.
It runs rope2d_attention's kernels with every position at (0, 0): the rotation by angle 0 is the identity,
bit for bit, on both devices (the CPU kernel multiplies by std::cos(0) == 1 and std::sin(0) == 0, the CUDA
kernel by sincosf(0)), and its cost is an O(T * D) cos/sin table next to the O(L^2 * D) attention, so a
separate RoPE-free kernel would buy nothing measurable (tests/ops/test_varlen_attention.py checks the
identity against the fp64 reference under the tolerance rule and bitwise against a pre-rotated call).
"""
from __future__ import annotations

import torch

from .attention import rope2d_attention

__all__ = ["varlen_attention"]


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, *,
    scale: float | None = None, max_seqlen: int | None = None,
) -> torch.Tensor:
    """Non-causal attention inside each cu_seqlens segment of packed `q_THD`, `k_THD`, `v_THD`.

    Arguments, dtypes, devices and the differentiability are those of `rope2d_attention` (q, k, v
    `[T, H, D]`, int32 `cu_seqlens [S + 1]`), without `pos_hw` and `theta`: no rotation is applied.
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q: expected a torch.Tensor, got {type(q).__name__}")
    no_rotation = torch.zeros((q.shape[0] if q.dim() >= 1 else 0, 2), dtype=torch.int32, device=q.device)
    return rope2d_attention(q, k, v, cu_seqlens, no_rotation, scale=scale, max_seqlen=max_seqlen)
