"""The 2D RoPE inverse frequencies every rope2d op hands to the compiled core: the one place they are made.

float32 `[D / 4]` on the tensors' device, from the reference's definition (`vl3fast.reference.rope2d_inv_freq`,
checked against transformers), so the kernels and the reference rotate by the same frequencies.  Cached per
(head dim, theta, device): a run has a handful, and a CUDA call must not copy a host tensor each time.
"""
from __future__ import annotations

import functools

import torch

from ..reference.rope import rope2d_inv_freq

__all__ = ["inv_freq_on"]


@functools.lru_cache(maxsize=64)  # bounded all the same
def inv_freq_on(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """float32 `inv_freq_F` (F = head_dim / 4) on `device`; shared, read-only: the core only reads it."""
    return rope2d_inv_freq(head_dim, theta).to(device)
