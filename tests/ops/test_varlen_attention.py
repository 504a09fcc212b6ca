"""vl3fast.ops.varlen_attention (rope2d_attention with every position at (0, 0): no rotation) against the fp64
reference without RoPE, with the tolerance rule of test_attention.py, for the output and dq, dk, dv."""
from __future__ import annotations

import pytest
import torch

from vl3fast.ops import apply_rope2d, rope2d_attention, varlen_attention

from .test_attention import FLOOR_EPS, _packed, _run


def _sdpa_per_segment(q, k, v, cu, scale=None):
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
        outs.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 72, 80])
def test_matches_reference_without_rope(dtype, head_dim):
    q, k, v, cu, _ = _packed([1, 37, 200, 64], 2, head_dim, dtype)
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = _run(lambda a, b, c: varlen_attention(a, b, c, cu), q, k, v, grad)
    same = _run(lambda a, b, c: _sdpa_per_segment(a, b, c, cu), q, k, v, grad)
    exact = _run(lambda a, b, c: _sdpa_per_segment(a, b, c, cu), q.double(), k.double(), v.double(), grad)
    eps = torch.finfo(dtype).eps
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), ours, same, exact):
        err, err_torch = (a.double() - r).abs().max().item(), (b.double() - r).abs().max().item()
        assert err <= 2 * err_torch + FLOOR_EPS * eps * r.abs().max().item(), (name, err, err_torch)


def test_zero_positions_are_the_identity_rotation():
    """RoPE at (0, 0) rotates by angle 0 (bit-identical), so pre-rotated q/k go through unchanged: rotating
    first and calling varlen_attention equals the fused kernel at the real positions."""
    q, k, v, cu, pos = _packed([50, 70], 2, 80, torch.float32)
    zeros = torch.zeros_like(pos)
    torch.testing.assert_close(apply_rope2d(q, zeros), q, rtol=0, atol=0)
    rotated_q, rotated_k = apply_rope2d(q, pos), apply_rope2d(k, pos)
    torch.testing.assert_close(varlen_attention(rotated_q, rotated_k, v, cu), rope2d_attention(q, k, v, cu, pos),
                               rtol=1e-5, atol=1e-6)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="q: expected a torch.Tensor"):
        varlen_attention([1.0], None, None, None)
    q = torch.randn(6, 2, 64)
    with pytest.raises(ValueError, match="cu_seqlens"):
        varlen_attention(q, q, q, torch.tensor([0, 5], dtype=torch.int32))
