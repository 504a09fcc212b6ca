"""Reference 2D RoPE (spec A): rotary dim D/2 = [D/4 row | D/4 col] frequencies, rotate_half over D."""
from __future__ import annotations

import torch


def rope2d_inv_freq(head_dim: int, theta: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`[D/4]` inverse frequencies, computed exactly as transformers does (float32 by default)."""
    rotary_dim = head_dim // 2
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=dtype) / rotary_dim))


def rope2d_cos_sin(pos_hw: torch.Tensor, head_dim: int, theta: float = 10000.0, dtype=torch.float32):
    """cos, sin `[T, D]` for positions `[T, 2]`: angles [row*f | col*f] repeated twice."""
    freqs = pos_hw[..., None].to(dtype) * rope2d_inv_freq(head_dim, theta, dtype).to(pos_hw.device)  # [T, 2, D/4]
    angles = freqs.flatten(1)  # [T, D/2] = [row angles | col angles]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope2d(x_THD: torch.Tensor, pos_hw: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotates x `[T, H, D]`; computes in float32 (float64 for float64 input) and returns x's dtype."""
    compute = torch.float64 if x_THD.dtype == torch.float64 else torch.float32
    cos, sin = rope2d_cos_sin(pos_hw, x_THD.shape[-1], theta, compute)
    x = x_THD.to(compute)
    out = x * cos[:, None, :] + _rotate_half(x) * sin[:, None, :]
    return out.to(x_THD.dtype)
