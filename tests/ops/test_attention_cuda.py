"""vl3fast.ops.rope2d_attention on CUDA tensors (tensor-core and simple kernels) against the fp64 reference.

Same rule and helpers as the CPU tests (tests/ops/test_attention.py, DESIGN.md §5): for out, dq, dk, dv,
err(kernel, fp64 ref) <= 2 * err(torch same dtype, fp64 ref) + floor, with "torch same dtype" the
transformers path (fp32 RoPE + per-segment SDPA) run on the same CUDA tensors.  Parametrized from the
kernel's single supported list (ATTENTION_CUDA_DTYPES x ATTENTION_CUDA_HEAD_DIMS, read from the compiled
core); float32 and other head dims on the simple kernel; checked mode (VL3FAST_CUDA_DEBUG), the
device-side input checks and the pre-pass outputs.  Marked `cuda`: skipped with the reason when no usable CUDA device (benchmarks/gpu/validate.sh runs them).
"""
from __future__ import annotations

import pytest
import torch

import vl3fast
from vl3fast.ops import rope2d_attention, rope2d_position_ids
from vl3fast.ops.attention import (
    ATTENTION_CUDA_DTYPES, ATTENTION_CUDA_HEAD_DIMS, kernel_for, run_backward, run_forward,
)

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


@pytest.mark.parametrize("head_dim", [72, 128])
def test_float32_runs_on_the_simple_kernel(head_dim):
    assert kernel_for("cuda", torch.float32, head_dim) == "cuda_simple"
    assert_matches_reference(*_cuda(*_packed([1, 2, 63, 130], 2, head_dim, torch.float32)))


@pytest.mark.parametrize("head_dim", [4, 48, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_head_dims_outside_the_tensor_core_list_run_on_the_simple_kernel(dtype, head_dim):
    assert kernel_for("cuda", dtype, head_dim) == "cuda_simple"
    assert_matches_reference(*_cuda(*_packed([1, 17, 70], 2, head_dim, dtype)))


@pytest.mark.parametrize("head_dim", [72, 128])
def test_simple_and_tensor_core_kernels_agree(head_dim):
    q, k, v, cu, pos = _cuda(*_packed([1, 65, 130], 2, head_dim, torch.bfloat16))
    scale = head_dim**-0.5
    out_tc, lse_tc = run_forward("cuda_tensor_core", q, k, v, cu, pos, 10000.0, scale)
    out_s, lse_s = run_forward("cuda_simple", q, k, v, cu, pos, 10000.0, scale)
    torch.testing.assert_close(out_tc.float(), out_s.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lse_tc, lse_s, rtol=0, atol=2e-2)


@pytest.mark.parametrize("kernel", ["cuda_tensor_core", "cuda_simple"])
def test_too_small_max_seqlen_hint_changes_nothing_and_checked_mode_names_it(kernel, monkeypatch):
    q, k, v, cu, pos = _cuda(*_packed([5, 300, 64, 65], 2, 72, torch.bfloat16))
    full, lse = run_forward(kernel, q, k, v, cu, pos, 10000.0, 72**-0.5)
    for hint in (0, 1, 64, 299):
        out, lse_h = run_forward(kernel, q, k, v, cu, pos, 10000.0, 72**-0.5, hint)
        torch.testing.assert_close(out, full, rtol=0, atol=0)
        torch.testing.assert_close(lse_h, lse, rtol=0, atol=0)
    monkeypatch.setenv("VL3FAST_CUDA_DEBUG", "1")
    with pytest.raises(ValueError, match="max_seqlen: the hint 64 is below the longest segment"):
        run_forward(kernel, q, k, v, cu, pos, 10000.0, 72**-0.5, 64)


@pytest.mark.parametrize("kernel", ["cuda_tensor_core", "cuda_simple"])
@pytest.mark.parametrize("cu_values", [[0, 50, 20, 100], [0, 60], [5, 40, 100], [0, 100, 100, 90]])
def test_malformed_cu_seqlens_gives_nan_and_checked_mode_names_it(kernel, cu_values, monkeypatch):
    q, k, v, _, pos = _cuda(*_packed([100], 2, 72, torch.bfloat16))
    cu = torch.tensor(cu_values, dtype=torch.int32, device="cuda")
    out, lse = run_forward(kernel, q, k, v, cu, pos, 10000.0, 72**-0.5)
    assert out.isnan().all() and lse.isnan().all()
    dq, dk, dv = run_backward(kernel, torch.ones_like(q), q, k, v, out, lse, cu, pos, 10000.0, 72**-0.5)
    assert dq.isnan().all() and dk.isnan().all() and dv.isnan().all()
    monkeypatch.setenv("VL3FAST_CUDA_DEBUG", "1")
    with pytest.raises(ValueError, match="cu_seqlens: inconsistent"):
        run_forward(kernel, q, k, v, cu, pos, 10000.0, 72**-0.5)
    torch.cuda.synchronize()  # the context is still usable


@pytest.mark.parametrize("kernel", ["cuda_tensor_core", "cuda_simple"])
def test_checked_mode_gives_the_same_results(kernel, monkeypatch):
    q, k, v, cu, pos = _cuda(*_packed([1, 63, 64, 65], 2, 72, torch.bfloat16))
    plain = run_forward(kernel, q, k, v, cu, pos, 10000.0, 72**-0.5)
    monkeypatch.setenv("VL3FAST_CUDA_DEBUG", "1")
    checked = run_forward(kernel, q, k, v, cu, pos, 10000.0, 72**-0.5)
    for a, b in zip(plain, checked):
        assert not b.isnan().any()  # every element written over the NaN fill
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    dq, dk, dv = run_backward(kernel, torch.ones_like(q), q, k, v, *checked, cu, pos, 10000.0, 72**-0.5)
    assert not (dq.isnan().any() or dk.isnan().any() or dv.isnan().any())


def test_prepass_outputs_match_their_definitions():
    from vl3fast.ops._attention_stages import check_prepass, tensor_core_prepass

    q, k, v, cu, pos = _cuda(*_packed([1, 65, 130], 2, 72, torch.bfloat16))
    dout = torch.randn_like(q)
    out, lse = run_forward("cuda_tensor_core", q, k, v, cu, pos, 10000.0, 72**-0.5)
    stages = tensor_core_prepass(q, k, v, cu, pos, 10000.0, 72**-0.5, dout=dout, out=out, lse=lse)
    assert check_prepass(stages, q, k, cu, pos, 10000.0, dout=dout, out=out) == []


def test_opcheck():
    q, k, v, cu, pos = _cuda(*_packed([20, 45], 2, 72, torch.bfloat16))
    args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), cu, pos, 10000.0, 72**-0.5, -1)
    torch.library.opcheck(torch.ops.vl3fast.rope2d_attention.default, args)
