"""vl3fast.ops.rope2d_attention on CUDA tensors (the tensor-core kernel) against the fp64 reference.

Same rule and helpers as the CPU tests (tests/ops/test_attention.py, DESIGN.md §5): for out, dq, dk, dv,
err(kernel, fp64 ref) <= 2 * err(torch same dtype, fp64 ref) + floor, with "torch same dtype" the
transformers path (fp32 RoPE + per-segment SDPA) run on the same CUDA tensors.  Parametrized from the
kernel's single supported list (ATTENTION_CUDA_DTYPES x ATTENTION_CUDA_HEAD_DIMS, read from the compiled
core).  Marked `cuda`: skipped with the reason when no usable CUDA device (benchmarks/gpu/validate.sh runs them).
"""
from __future__ import annotations

import pytest
import torch

import vl3fast
from vl3fast.ops import rope2d_attention, rope2d_position_ids
from vl3fast.ops.attention import ATTENTION_CUDA_DTYPES, ATTENTION_CUDA_HEAD_DIMS

from .test_attention import _packed, assert_matches_reference

_usable, _reason = vl3fast.cuda_status()
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (_usable and torch.cuda.is_available()),
                       reason=_reason if not _usable else "torch sees no CUDA device"),
]


def _cuda(*tensors):
    return tuple(t.cuda() for t in tensors)


@pytest.mark.parametrize("head_dim", ATTENTION_CUDA_HEAD_DIMS)
@pytest.mark.parametrize("dtype", ATTENTION_CUDA_DTYPES, ids=str)
def test_every_config_segment_lengths_1_2_97_1025(dtype, head_dim):
    assert_matches_reference(*_cuda(*_packed([1, 2, 97, 1025], 2, head_dim, dtype)))


@pytest.mark.parametrize("num_segments", [1, 7, 200])
def test_many_segments(num_segments):
    gen = torch.Generator().manual_seed(num_segments)
    lengths = torch.randint(1, 90, (num_segments,), generator=gen).tolist()
    assert_matches_reference(*_cuda(*_packed(lengths, 3, 72, torch.bfloat16)))


def test_one_long_segment_among_many_tiny():
    assert_matches_reference(*_cuda(*_packed([1500] + [1, 2, 3, 5] * 10, 2, 72, torch.bfloat16)))


def test_empty_segments_custom_scale_theta():
    assert_matches_reference(*_cuda(*_packed([0, 33, 0, 70, 0], 2, 80, torch.float16)), scale=0.3, theta=500.0)


@pytest.mark.parametrize("merge_size", [1, 2])
def test_real_grid_positions(merge_size):
    grid = torch.tensor([[1, 16, 20], [3, 12, 8]])
    merge = torch.tensor([merge_size, merge_size])
    pos, cu = rope2d_position_ids(grid, merge)
    q, k, v, _, _ = _packed((cu[1:] - cu[:-1]).tolist(), 2, 72, torch.bfloat16)
    assert_matches_reference(*_cuda(q, k, v, cu, pos))


def test_max_seqlen_hint_gives_identical_results():
    q, k, v, cu, pos = _cuda(*_packed([5, 300, 64, 65], 2, 72, torch.bfloat16))
    a = rope2d_attention(q, k, v, cu, pos)
    b = rope2d_attention(q, k, v, cu, pos, max_seqlen=300)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_strided_and_unaligned_views():
    """q/k/v as views of one wide buffer (head stride 228, offsets not 16-byte aligned): the kernel reads q and
    k with their strides and v through a 16-byte-aligned copy; results match contiguous inputs."""
    q, k, v, cu, pos = _cuda(*_packed([97, 130], 2, 72, torch.bfloat16))
    wide = torch.zeros(q.shape[0], 2, 3, 76, dtype=q.dtype, device="cuda")
    for i, t in enumerate((q, k, v)):
        wide[:, :, i, :72] = t
    wide.requires_grad_()
    views = [wide[:, :, i, :72] for i in range(3)]
    assert views[2].stride(1) % 8 != 0 and views[1].data_ptr() % 16 != 0
    grad = torch.randn_like(q)
    out = rope2d_attention(*views, cu, pos)
    out.backward(grad)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    expected = rope2d_attention(*leaves, cu, pos)
    expected.backward(grad)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # the forward is deterministic
    for i, leaf in enumerate(leaves):  # dq sums fp32 atomics in a run-dependent order
        torch.testing.assert_close(wide.grad[:, :, i, :72], leaf.grad, rtol=2e-2, atol=2e-2)


def test_lse_is_logsumexp_of_scaled_logits():
    from vl3fast.reference.rope import apply_rope2d

    q, k, v, cu, pos = _cuda(*_packed([40, 77], 2, 64, torch.float16))
    _, lse = torch.ops.vl3fast.rope2d_attention(q, k, v, cu, pos, 10000.0, 64**-0.5, -1)
    qr, kr = apply_rope2d(q.double(), pos), apply_rope2d(k.double(), pos)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        s = torch.einsum("qhd,khd->hqk", qr[a:b], kr[a:b]) * 64**-0.5
        torch.testing.assert_close(lse[:, a:b].double(), torch.logsumexp(s, -1), rtol=0, atol=2e-2)


def test_nan_stays_in_its_row_and_dk_dv_are_deterministic():
    q, k, v, cu, pos = _cuda(*_packed([10, 40], 2, 72, torch.bfloat16))
    q_nan = q.clone()
    q_nan[3, 0, 5] = float("nan")
    out = rope2d_attention(q_nan, k, v, cu, pos)
    assert out[3, 0].isnan().all()
    nan_rows = out.isnan().any(-1)
    nan_rows[3, 0] = False
    assert not nan_rows.any()
    grads = []
    for _ in range(2):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        rope2d_attention(*leaves, cu, pos).backward(torch.ones_like(q))
        grads.append([t.grad for t in leaves])
    # dk and dv are accumulated in registers in a fixed order; dq uses fp32 atomics (order may vary).
    for i in (1, 2):
        torch.testing.assert_close(grads[0][i], grads[1][i], rtol=0, atol=0)


def test_no_host_sync():
    q, k, v, cu, pos = _cuda(*_packed([100, 200, 3], 2, 72, torch.bfloat16))
    for t in (q, k, v):
        t.requires_grad_()
    rope2d_attention(q, k, v, cu, pos).sum().backward()  # warm-up: caches inv_freq on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = rope2d_attention(q, k, v, cu, pos)
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_float32_on_cuda_is_a_type_error_naming_the_supported_dtypes():
    q = torch.zeros(10, 2, 72, device="cuda")
    with pytest.raises(TypeError, match="bfloat16, float16"):
        rope2d_attention(q, q, q, torch.tensor([0, 10], dtype=torch.int32, device="cuda"),
                         torch.zeros(10, 2, dtype=torch.int32, device="cuda"))


@pytest.mark.parametrize("head_dim", [4, 48, 256])
def test_unsupported_head_dim_on_cuda_names_the_supported_set(head_dim):
    q = torch.zeros(10, 2, head_dim, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"supported on CUDA: \(64, 72, 80, 96, 128\)"):
        rope2d_attention(q, q, q, torch.tensor([0, 10], dtype=torch.int32, device="cuda"),
                         torch.zeros(10, 2, dtype=torch.int32, device="cuda"))


def test_opcheck():
    q, k, v, cu, pos = _cuda(*_packed([20, 45], 2, 72, torch.bfloat16))
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), cu, pos, 10000.0, 72**-0.5, -1)
    torch.library.opcheck(torch.ops.vl3fast.rope2d_attention.default, args)
