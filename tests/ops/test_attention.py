"""vl3fast.ops.rope2d_attention (CPU kernel) against the fp64 reference, with DESIGN.md §5's rule:

    err(kernel, fp64 ref) <= 2 * err(torch same dtype, fp64 ref) + floor

for the output and the gradients of q, k and v.  "torch same dtype" is vl3fast.reference.rope2d_attention
run in the test dtype (fp32 RoPE, per-segment SDPA: the transformers path).  Sizes stay small: the whole
file runs in well under a minute on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import vl3fast
from vl3fast.ops import rope2d_attention, rope2d_position_ids
from vl3fast.ops.attention import ATTENTION_DTYPES, ATTENTION_FAST_HEAD_DIMS
from vl3fast.reference import rope2d_attention as reference_attention

# Absolute floor of the tolerance rule (kept tiny: the kernel passes even with none), in units of the dtype's epsilon times the reference's max |value|:
# covers the last-bit differences where torch's own error happens to be ~0.
FLOOR_EPS = 1
DTYPES = list(ATTENTION_DTYPES)


def _packed(lengths, heads, head_dim, dtype, *, seed=0, positions=None):
    gen = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=torch.int32)
    if positions is None:
        positions = torch.randint(0, 48, (T, 2), generator=gen, dtype=torch.int32)
    q, k, v = (torch.randn(T, heads, head_dim, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    return q, k, v, cu, positions


def _run(fn, q, k, v, grad, **kw):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(grad.to(device=out.device, dtype=out.dtype))
    return [out.detach(), q.grad, k.grad, v.grad]


def assert_matches_reference(q, k, v, cu, pos, *, seed=1, **kw):
    """The tolerance rule for out, dq, dk, dv; returns the kernel's results."""
    grad = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    kernel = _run(lambda a, b, c: rope2d_attention(a, b, c, cu, pos, **kw), q, k, v, grad)
    ref_kw = {key: val for key, val in kw.items() if key in ("theta", "scale")}
    same = _run(lambda a, b, c: reference_attention(a, b, c, cu, pos, **ref_kw), q, k, v, grad)
    exact = _run(lambda a, b, c: reference_attention(a, b, c, cu, pos, **ref_kw), q.double(), k.double(), v.double(), grad)
    eps = torch.finfo(q.dtype).eps
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), kernel, same, exact):
        assert a.dtype == q.dtype and a.shape == q.shape, name
        err = (a.double() - r).abs().max().item()
        err_torch = (b.double() - r).abs().max().item()
        floor = FLOOR_EPS * eps * r.abs().max().item()
        assert err <= 2 * err_torch + floor, (
            f"{name} ({q.dtype}): err {err:.3e} > 2 * torch err {err_torch:.3e} + floor {floor:.3e}"
        )
    return kernel


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_segment_lengths_1_2_97_1025(dtype):
    assert_matches_reference(*_packed([1, 2, 97, 1025], 2, 72, dtype))


@pytest.mark.parametrize("head_dim", list(ATTENTION_FAST_HEAD_DIMS) + [96, 4, 256])
def test_head_dims(head_dim):
    # 96, 4 and 256 take the runtime head-dim path.
    assert_matches_reference(*_packed([70, 130, 5], 2, head_dim, torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_head_dim_96_reduced_precision(dtype):
    assert_matches_reference(*_packed([33, 200], 3, 96, dtype))


@pytest.mark.parametrize("num_segments", [1, 7, 200])
def test_many_segments(num_segments):
    gen = torch.Generator().manual_seed(num_segments)
    lengths = torch.randint(1, 40 if num_segments < 100 else 9, (num_segments,), generator=gen).tolist()
    assert_matches_reference(*_packed(lengths, 2, 72, torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_one_long_segment_among_many_tiny(dtype):
    lengths = [1, 2, 1, 3] * 15 + [1100] + [2, 1] * 10  # 1100: its K/V rows are packed (attention_tiles.h)
    assert_matches_reference(*_packed(lengths, 2, 72, dtype))


@pytest.mark.parametrize("schedule", ["fused", "two_pass"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_schedules(dtype, schedule):
    """Both schedules of the backward (attn_backward_fused, csrc/cpu/attention_tiles.h) meet the rule: at least
    4 (segment, head) items per thread run fused, fewer run in two passes over 64-row blocks (on avx512bf16 both
    are bf16 dot-product kernels, kernels/attention_bf16_backward.cpp)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # 2 segments: 8 heads -> 16 items (fused), 1 head -> 2 items (two passes); 1100 tokens: the fp32-tile
        # kernels read its rows packed (kAttnPackKvMinLen, attention_tiles.h)
        assert_matches_reference(*_packed([1100, 65], 8 if schedule == "fused" else 1, 72, dtype))
    finally:
        torch.set_num_threads(threads)


def test_empty_segments_and_custom_scale_theta():
    q, k, v, _, pos = _packed([5, 9, 3], 2, 64, torch.float32)
    cu = torch.tensor([0, 0, 5, 5, 14, 17, 17], dtype=torch.int32)
    assert_matches_reference(q, k, v, cu, pos, theta=100.0, scale=0.3)


def test_dense_mask_baseline_equals_per_segment_reference():
    """The benchmark's dense block-diagonal mask baseline computes the same attention as the reference."""
    from vl3fast.reference import rope2d_attention_dense_mask

    q, k, v, cu, pos = _packed([1, 30, 0, 17], 2, 72, torch.float64)
    torch.testing.assert_close(rope2d_attention_dense_mask(q, k, v, cu, pos), reference_attention(q, k, v, cu, pos))


def test_no_tokens():
    q = torch.empty(0, 2, 72)
    out = rope2d_attention(q, q, q, torch.zeros(1, dtype=torch.int32), torch.empty(0, 2, dtype=torch.int32))
    assert out.shape == (0, 2, 72)


@pytest.mark.parametrize("merge_size", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_real_grid_positions(merge_size, dtype):
    grid = [[1, 14, 18], [3, 8, 6], [1, 2, 2]]
    pos, cu = rope2d_position_ids(grid, [merge_size] * len(grid))
    q, k, v, _, _ = _packed([pos.shape[0]], 2, 72, dtype)
    assert_matches_reference(q, k, v, cu, pos, max_seqlen=252)


def test_fused_qkv_projection_views():
    """q, k, v as strided views of one [T, 3, H, D] projection: same results as contiguous copies (a segment
    whose K and V rows the forward packs first, longer than kAttnPackKvMinLen = 1024, and a short one)."""
    gen = torch.Generator().manual_seed(3)
    T, H, D = 1138, 3, 72
    pos, cu = rope2d_position_ids([[1, 32, 34], [1, 5, 10]], [2, 1])
    x = torch.randn(T, 40, generator=gen)
    w = torch.randn(3 * H * D, 40, generator=gen) / 7
    qkv = (x @ w.t()).view(T, 3, H, D)
    q, k, v = qkv.unbind(1)
    assert not q.is_contiguous() and q.stride(-1) == 1
    strided = assert_matches_reference(q, k, v, cu, pos)
    contiguous = _run(lambda a, b, c: rope2d_attention(a, b, c, cu, pos), q.contiguous(), k.contiguous(),
                      v.contiguous(), torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    for a, b in zip(strided, contiguous):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Head-major views ([H, T, D] transposed) work as well.
    qh = q.transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(rope2d_attention(qh, k, v, cu, pos), strided[0], rtol=0, atol=0)


def test_lse_is_logsumexp_of_scaled_logits():
    q, k, v, cu, pos = _packed([20, 45], 2, 72, torch.float32)
    out, lse = torch.ops.vl3fast.rope2d_attention(q, k, v, cu, pos, 10000.0, 0.125, -1)
    from vl3fast.reference import apply_rope2d

    qr, kr = apply_rope2d(q.double(), pos), apply_rope2d(k.double(), pos)
    for a, b in ((0, 20), (20, 65)):
        logits = torch.einsum("qhd,khd->hqk", qr[a:b], kr[a:b]) * 0.125
        torch.testing.assert_close(lse[:, a:b].double(), logits.logsumexp(-1), rtol=1e-5, atol=1e-5)
    assert lse.shape == (2, 65) and lse.dtype == torch.float32


def test_nan_stays_in_its_segment():
    q, k, v, cu, pos = _packed([10, 12], 2, 72, torch.float32)
    q[3, 0, 5] = float("nan")
    out = rope2d_attention(q, k, v, cu, pos)
    assert out[3, 0].isnan().all()
    nan_rows = out.isnan().any(-1)
    nan_rows[3, 0] = False
    assert not nan_rows.any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(dtype):
    q, k, v, cu, pos = _packed([3, 17, 40], 2, 72, dtype)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    torch.library.opcheck(torch.ops.vl3fast.rope2d_attention, (q, k, v, cu, pos, 10000.0, 72**-0.5, -1))
    with torch.no_grad():
        out, lse = torch.ops.vl3fast.rope2d_attention(q, k, v, cu, pos, 10000.0, 72**-0.5, -1)
    torch.library.opcheck(
        torch.ops.vl3fast.rope2d_attention_backward,
        (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, cu, pos, 10000.0, 72**-0.5),
    )


# ------------------------------------------------------------------------------------------ bad input
def _good():
    q, k, v, cu, pos = _packed([4, 6], 2, 8, torch.float32)
    return dict(q=q, k=k, v=v, cu_seqlens=cu, pos_hw=pos)


def _call(**args):
    kw = {key: args.pop(key) for key in ("theta", "scale", "max_seqlen") if key in args}
    return rope2d_attention(args["q"], args["k"], args["v"], args["cu_seqlens"], args["pos_hw"], **kw)


BAD = {
    "cu_not_zero_first": (dict(cu_seqlens=torch.tensor([1, 4, 10], dtype=torch.int32)), ValueError, "start at 0"),
    "cu_decreasing": (dict(cu_seqlens=torch.tensor([0, 6, 4, 10], dtype=torch.int32)), ValueError, "non-decreasing"),
    "cu_last_not_T": (dict(cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32)), ValueError, "last value"),
    "cu_int64": (dict(cu_seqlens=torch.tensor([0, 4, 10])), TypeError, "cu_seqlens"),
    "cu_2d": (dict(cu_seqlens=torch.tensor([[0, 4, 10]], dtype=torch.int32)), ValueError, "cu_seqlens"),
    "pos_shape": (dict(pos_hw=torch.zeros(10, 3, dtype=torch.int32)), ValueError, "pos_hw"),
    "pos_tokens": (dict(pos_hw=torch.zeros(9, 2, dtype=torch.int32)), ValueError, "pos_hw"),
    "pos_negative": (dict(pos_hw=-torch.ones(10, 2, dtype=torch.int32)), ValueError, "pos_hw"),
    "pos_int64": (dict(pos_hw=torch.zeros(10, 2, dtype=torch.int64)), TypeError, "pos_hw"),
    "k_shape": (dict(k=torch.zeros(10, 2, 12)), ValueError, "k:"),
    "v_dtype": (dict(v=torch.zeros(10, 2, 8, dtype=torch.float16)), TypeError, "v:"),
    "q_float64": (dict(q=torch.zeros(10, 2, 8, dtype=torch.float64)), TypeError, "q:"),
    "q_2d": (dict(q=torch.zeros(10, 16)), ValueError, "q:"),
    "q_last_dim_strided": (dict(q=torch.zeros(10, 2, 16)[..., ::2]), ValueError, "contiguous"),
    "scale_zero": (dict(scale=0.0), ValueError, "scale"),
    "scale_nan": (dict(scale=float("nan")), ValueError, "scale"),
    "theta_negative": (dict(theta=-1.0), ValueError, "theta"),
    "max_seqlen_short": (dict(max_seqlen=5), ValueError, "max_seqlen"),
    "q_not_tensor": (dict(q=[1.0]), TypeError, "q"),
    "device_mismatch": (dict(pos_hw=torch.zeros(10, 2, dtype=torch.int32, device="meta")), ValueError, "device"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case):
    change, error, match = BAD[case]
    with pytest.raises(error, match=match):
        _call(**{**_good(), **change})


@pytest.mark.parametrize("head_dim", [70, 71, 260, 2])
def test_unsupported_head_dim(head_dim):
    q = torch.zeros(10, 2, head_dim)
    with pytest.raises(ValueError, match=r"supported: multiples of 4 in \[4, 256\].*fast paths for \(64, 72, 80, 128\)"):
        rope2d_attention(q, q, q, torch.tensor([0, 10], dtype=torch.int32), torch.zeros(10, 2, dtype=torch.int32))


# ------------------------------------------------------------------------------ subprocess checks
def _python(code: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


_ISA_SCRIPT = """
    import sys, torch, vl3fast
    from vl3fast.ops import rope2d_attention
    gen = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 1, 71, 271, 276], dtype=torch.int32)
    pos = torch.randint(0, 30, (276, 2), generator=gen, dtype=torch.int32)
    results = {"isa": vl3fast.info()["cpu_isa"]}
    for dtype, D in ((torch.float32, 72), (torch.float32, 96), (torch.bfloat16, 72), (torch.float16, 80)):
        q, k, v = (torch.randn(276, 2, D, generator=gen).to(dtype).requires_grad_() for _ in range(3))
        out = rope2d_attention(q, k, v, cu, pos)
        out.backward(torch.randn(out.shape, generator=gen).to(dtype))
        results[f"{dtype}-{D}"] = [t.float().flatten().tolist() for t in (out, q.grad, k.grad, v.grad)]
    torch.save(results, OUT)
"""


ISA_LEVELS = vl3fast.info()["cpu_isas_compiled"]
_LACKS = "this CPU lacks it"


def _isa_results(level: str, path) -> dict:
    """_ISA_SCRIPT's results at `level`; skips, naming the level, when this CPU lacks it."""
    proc = _python(f"OUT = {str(path)!r}\n" + textwrap.dedent(_ISA_SCRIPT), {"VL3FAST_CPU_ISA": level})
    if proc.returncode != 0 and _LACKS in proc.stderr:
        pytest.skip(f"ISA level {level}: {_LACKS}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = torch.load(path)
    assert results.pop("isa") == level
    return results


@pytest.fixture(scope="module")
def generic_isa_results(tmp_path_factory):
    return _isa_results("generic", tmp_path_factory.mktemp("isa") / "generic.pt")


@pytest.mark.parametrize("level", [lv for lv in ISA_LEVELS if lv != "generic"])
def test_isa_level_agrees_with_generic(level, generic_isa_results, tmp_path):
    got = _isa_results(level, tmp_path / f"{level}.pt")
    for key, tensors in generic_isa_results.items():
        dtype = key.split("-")[0]
        # fp32 levels differ only in FMA contraction and summation order: a few ulp.  bf16 forwards on
        # avx512bf16 also round rotated q, k and P to bf16 (as torch does): a few bf16 ulp.
        tol = {"torch.float32": 1e-5, "torch.bfloat16": 3e-2, "torch.float16": 4e-3}[dtype]
        for name, a, b in zip(("out", "dq", "dk", "dv"), tensors, got[key]):
            err = (torch.tensor(a) - torch.tensor(b)).abs().max().item()
            assert err <= tol, f"{level} vs generic, {key} {name}: max diff {err:.3e}"


@pytest.mark.parametrize("level", ISA_LEVELS)
def test_tolerance_rule_at_isa_level(level):
    """This file's correctness tests (the fp64 tolerance rule, every dtype) rerun at each ISA level in a
    subprocess; the level this process runs at is covered by the tests themselves."""
    if level == vl3fast.info()["cpu_isa"]:
        pytest.skip(f"ISA level {level} is this process's level: the tests above ran on it")
    probe = _python("import vl3fast; vl3fast.info()", {"VL3FAST_CPU_ISA": level})
    if probe.returncode != 0 and _LACKS in probe.stderr:
        pytest.skip(f"ISA level {level}: {_LACKS}")
    selection = "not isa_level and not peak_memory and not bad_input and not unsupported and not opcheck"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k", selection],
        capture_output=True, text=True, env={**os.environ, "VL3FAST_CPU_ISA": level}, timeout=1800,
    )
    assert proc.returncode == 0, f"at {level}:\n" + proc.stdout[-3000:]


def test_peak_memory_16k_tokens_far_below_dense():
    """One 16384-token segment, forward and backward: peak RSS growth is far below one L x L fp32 matrix
    (1 GiB).  An O(L^2) implementation (dense mask, materialized scores) would exceed the bound."""
    code = """
        import resource, torch, json
        from vl3fast.ops import rope2d_attention
        T, H, D = 16384, 1, 16
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(T, H, D, generator=gen).requires_grad_() for _ in range(3))
        cu = torch.tensor([0, T], dtype=torch.int32)
        pos = torch.randint(0, 128, (T, 2), generator=gen, dtype=torch.int32)
        small = slice(0, 256)
        rope2d_attention(q[small], k[small], v[small], torch.tensor([0, 256], dtype=torch.int32), pos[small]).sum().backward()
        grad = torch.randn(T, H, D, generator=gen)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = rope2d_attention(q, k, v, cu, pos)
        out.backward(grad)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"growth_kib": after - before, "finite": bool(torch.isfinite(q.grad).all())}))
    """
    proc = _python(code, {})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    dense_kib = 16384 * 16384 * 4 // 1024
    assert result["finite"]
    assert result["growth_kib"] < dense_kib // 8, f"peak RSS grew {result['growth_kib']} KiB (dense: {dense_kib} KiB)"
