"""Seeded random valid inputs for every op against vl3fast.reference (and transformers where it has the function).

Case counts: 1,000 per op by default (for attention, whose cases cost ~10x: 400 bf16/fp16 and 1,000 fp32 ones), sized
so that `make test` stays in budget; set ``VL3FAST_FUZZ_CASES=N`` for long runs (N cases per op). Every case must match: masks, indices and positions
exactly, floating-point results under the tolerance rule of tests/ops/test_attention.py (DESIGN §5):

    err(kernel, fp64 reference) <= 2 * err(torch same dtype, fp64 reference) + floor

The floor is one epsilon of the dtype times the largest |value| of the exact result, as in test_attention.py,
with one documented degenerate class: a 1-token segment's exact dq and dk are 0 (softmax over one key is the
constant 1, so its gradient is identically 0). There the floor is 0 and the rule asks the kernel for exactly 0
(it computes such a segment's softmax as exactly 1); no other input gets a different rule.
"""
from __future__ import annotations

import os

import pytest
import torch

import vl3fast
from vl3fast import reference

# Attention cases cost ~10x the others (three runs, fp64 autograd): 400 bf16/fp16 and 1,000 fp32 cases by default
# keep `make test` in budget (the fp32 ones: ~30 s on 2 busy cores).
CASES = int(os.environ.get("VL3FAST_FUZZ_CASES", "1000"))
ATTENTION_CASES = {"reduced": int(os.environ.get("VL3FAST_FUZZ_CASES", "400")),
                   "fp32": int(os.environ.get("VL3FAST_FUZZ_CASES", "1000"))}
CHUNKS = 10  # cases run in CHUNKS parametrized tests so a failure report names a seed range


def _chunks(total=CASES):
    per = max(1, -(-total // CHUNKS))
    return [range(s, min(s + per, total)) for s in range(0, total, per)]


def _ids(chunks):
    return [f"cases{r.start}-{r.stop - 1}" for r in chunks]


def _random_grid(g: torch.Generator, *, max_items=6, max_side=12, max_t=5):
    """(grid_thw int64 [N, 3], merge_sizes int64 [N]): images and videos, odd sides, merge 1 or 2, sometimes one
    large item beside many tiny ones."""
    def r(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    if r(0, 9) == 0:  # one long item beside tiny ones
        rows = [(1, 2 * r(6, 16), 2 * r(6, 16), 2)] + [(1, 1, r(1, 3), 1) for _ in range(r(5, 30))]
    else:
        rows = []
        for _ in range(r(1, max_items)):
            m = r(1, 2)
            t = 1 if r(0, 2) == 0 else r(1, max_t)
            rows.append((t, m * r(1, max_side // m), m * r(1, max_side // m), m))
    order = torch.randperm(len(rows), generator=g).tolist()
    rows = [rows[i] for i in order]
    grid = torch.tensor([row[:3] for row in rows], dtype=torch.int64)
    merges = torch.tensor([row[3] for row in rows], dtype=torch.int64)
    return grid, merges


# ---- positions -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cases", _chunks(), ids=_ids(_chunks()))
def test_fuzz_position_ids(cases):
    for seed in cases:
        g = torch.Generator().manual_seed(seed)
        grid, merges = _random_grid(g)
        if seed % 2:
            grid, merges = grid.to(torch.int32), merges.to(torch.int32)
        got = vl3fast.ops.rope2d_position_ids(grid, merges)
        want = reference.rope2d_position_ids(grid.long(), merges.long())
        for name, a, b in zip(("pos_hw", "cu_seqlens"), got, want):
            assert a.dtype == torch.int32 and torch.equal(a, b), (seed, name, grid.tolist(), merges.tolist())


# ---- frame pruning ---------------------------------------------------------------------------------------------
def _pruning_case(g: torch.Generator, seed: int):
    grid, merges = _random_grid(g, max_items=4, max_side=8, max_t=6)
    patches = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum())
    width = int(torch.tensor([12, 588, 36, 3])[seed % 4])
    kind = seed % 5
    if kind == 0:  # static video: every diff exactly 0
        base = torch.rand(patches, width, generator=g)
        pixels = base
    else:
        pixels = torch.rand(patches, width, generator=g) * 2 - 1
    # Near-tie scores: tiny perturbations so that 255 * mean|diff| lands within a few ulps of the threshold.
    if kind in (1, 2):
        target = 0.1 / 255
        start = 0
        for (t, h, w), m in zip(grid.tolist(), merges.tolist()):
            n = h * w
            block = pixels[start:start + t * n]
            for f in range(1, t):
                scale = 1 + (torch.rand(n, 1, generator=g) - 0.5) * 4e-7
                block[f * n:(f + 1) * n] = block[(f - 1) * n:f * n] + target * scale
            start += t * n
    if kind == 3:
        threshold = float(2 ** int(torch.randint(23, 34, (1,), generator=g))) * (1 + float(torch.rand(1, generator=g)))
    elif kind == 4:
        threshold = float(torch.rand(1, generator=g)) * 60
    else:
        threshold = 0.1
    min_frame_tokens = min(((h // m) * (w // m)) for (t, h, w), m in zip(grid.tolist(), merges.tolist()))
    min_tokens = int(torch.randint(0, min_frame_tokens + 1, (1,), generator=g))
    return pixels, grid, merges, threshold, min_tokens


@pytest.mark.parametrize("cases", _chunks(), ids=_ids(_chunks()))
def test_fuzz_frame_keep_mask(cases):
    from transformers.models.video_llama_3.video_processing_video_llama_3 import VideoLlama3VideoProcessor

    hf = VideoLlama3VideoProcessor()
    for seed in cases:
        g = torch.Generator().manual_seed(10_000 + seed)
        pixels, grid, merges, threshold, min_tokens = _pruning_case(g, seed)
        got = vl3fast.ops.frame_keep_mask(pixels, grid, merges, threshold=threshold, min_tokens=min_tokens)
        want = reference.frame_keep_mask(pixels, grid, merges, threshold=threshold, min_tokens=min_tokens)
        assert torch.equal(got, want), (seed, threshold, min_tokens, grid.tolist(), merges.tolist())
        if grid[:, 0].max() > 1:  # transformers' own mask (it needs at least one video in the batch)
            theirs = hf._get_compression_mask(pixels, grid, merges, threshold, min_tokens)
            assert torch.equal(got, theirs), (seed, "transformers", threshold, min_tokens)
        kept = vl3fast.ops.keep_compaction(got, grid, merges)
        assert int(kept.num_kept[0]) == int(got.sum()), seed
        assert torch.equal(kept.token_index[: int(got.sum())].long(), torch.nonzero(got)[:, 0]), seed


def _exact_rope(x64, pos, theta):
    """The semantics in fp64: angles rounded to fp32 exactly as defined (float(position) * fp32 inv_freq, as
    transformers), everything after them in fp64. Comparing against fp64 *angles* would charge both paths the
    same fp32 angle rounding (~1e-4 at position 4000) and hide any difference between them."""
    from vl3fast.reference.rope import _rotate_half, rope2d_inv_freq

    freqs = pos[..., None].float() * rope2d_inv_freq(x64.shape[-1], theta, torch.float32)
    angles = freqs.flatten(1).double()
    angles = torch.cat([angles, angles], dim=-1)
    return x64 * angles.cos()[:, None, :] + _rotate_half(x64) * angles.sin()[:, None, :]


def _exact_attention(q64, k64, v64, cu, pos, theta=10000.0):
    return reference.packed_attention(_exact_rope(q64, pos, theta), _exact_rope(k64, pos, theta), v64, cu)


# ---- apply_rope2d ----------------------------------------------------------------------------------------------
def _rule(name, kernel, same, exact, dtype, seed):
    eps = torch.finfo(dtype).eps
    if kernel.numel() == 0:
        return
    err = (kernel.double() - exact).abs().max().item()
    err_torch = (same.double() - exact).abs().max().item()
    floor = eps * exact.abs().max().item()
    assert err <= 2 * err_torch + floor, (
        f"case {seed} {name} ({dtype}): err {err:.3e} > 2 * torch err {err_torch:.3e} + floor {floor:.3e}")


@pytest.mark.parametrize("cases", _chunks(), ids=_ids(_chunks()))
def test_fuzz_apply_rope2d(cases):
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    for seed in cases:
        g = torch.Generator().manual_seed(20_000 + seed)
        T = int(torch.randint(1, 64, (1,), generator=g))
        H = int(torch.randint(1, 4, (1,), generator=g))
        D = 4 * int(torch.randint(1, 65, (1,), generator=g))
        dtype = dtypes[seed % 3]
        theta = [10000.0, 500.0, 1e6][seed % 3 if seed % 7 else 1]
        pos = torch.randint(0, [48, 4000][seed % 2], (T, 2), generator=g, dtype=torch.int32)
        x64 = torch.randn(T, H, D, generator=g, dtype=torch.float64)
        if seed % 4 == 0:  # a strided view (a slice of a fused qkv tensor)
            x64 = torch.randn(T, 3, H, D, generator=g, dtype=torch.float64)[:, 1]
        grad = torch.randn(T, H, D, generator=g, dtype=torch.float64)
        results = []
        for fn, x in ((vl3fast.ops.apply_rope2d, x64.to(dtype)), (reference.apply_rope2d, x64.to(dtype)),
                      (_exact_rope, x64)):
            x = x.detach().clone().requires_grad_() if x.is_contiguous() else x.detach().requires_grad_()
            out = fn(x, pos, theta)
            out.backward(grad.to(out.dtype))
            results.append((out.detach(), x.grad))
        for i, name in enumerate(("out", "dx")):
            _rule(name, results[0][i], results[1][i], results[2][i], dtype, seed)


# ---- rope2d_attention ------------------------------------------------------------------------------------------
def _lengths(g: torch.Generator, seed: int) -> list[int]:
    def r(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    kind = seed % 6
    if kind == 0:
        return [1] * r(1, 12)  # all 1-token segments (the degenerate class)
    if kind == 1:
        return [r(65, 200)] + [r(1, 3) for _ in range(r(1, 20))]  # one long (> one 64-key block) beside tiny ones
    if kind == 2:
        return [r(1, 2) for _ in range(r(1, 8))]
    return [r(1, 70) for _ in range(r(1, 4))]


@pytest.mark.parametrize("precision,cases", [
    pytest.param(precision, cases, id=f"{precision}-{name}")
    for precision, total in ATTENTION_CASES.items() for cases, name in zip(_chunks(total), _ids(_chunks(total)))])
def test_fuzz_rope2d_attention(precision, cases):
    dtypes = (torch.float32,) if precision == "fp32" else (torch.bfloat16, torch.float16)
    for seed in cases:
        g = torch.Generator().manual_seed(30_000 + seed)
        lengths = _lengths(g, seed)
        T = sum(lengths)
        H = int(torch.randint(1, 4, (1,), generator=g))
        D = [64, 72, 80, 128][seed % 4] if seed % 3 else 4 * int(torch.randint(1, 65, (1,), generator=g))
        dtype = dtypes[seed % len(dtypes)]
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
        pos = torch.randint(0, 48, (T, 2), generator=g, dtype=torch.int32)
        fused = seed % 4 == 1
        if fused:  # q, k, v as strided views of one fused qkv projection
            qkv = torch.randn(T, 3, H, D, generator=g, dtype=torch.float64)
            q64, k64, v64 = qkv.unbind(1)
        else:
            q64, k64, v64 = (torch.randn(T, H, D, generator=g, dtype=torch.float64) for _ in range(3))
        grad = torch.randn(T, H, D, generator=g, dtype=torch.float64)
        runs = []
        for fn, dt in ((vl3fast.ops.rope2d_attention, dtype), (reference.rope2d_attention, dtype),
                       (_exact_attention, torch.float64)):
            if fused and dt == dtype and fn is vl3fast.ops.rope2d_attention:
                base = qkv.to(dt).detach().requires_grad_()
                q, k, v = base.unbind(1)
                out = fn(q, k, v, cu, pos)
                out.backward(grad.to(dt))
                dq, dk, dv = base.grad.unbind(1)
            else:
                q, k, v = (t.to(dt).detach().clone().requires_grad_() for t in (q64, k64, v64))
                out = fn(q, k, v, cu, pos)
                out.backward(grad.to(dt))
                dq, dk, dv = q.grad, k.grad, v.grad
            runs.append((out.detach(), dq, dk, dv))
        # The degenerate class: rows of 1-token segments, whose exact dq and dk are 0 (the fp64 path leaves ~1e-16 of
        # round-off there, which is not the exact value). Their floor is 0, so the rule is that the kernel's are
        # exactly 0 too; the rows of every other segment keep the ordinary rule.
        single = torch.repeat_interleave(torch.tensor([n == 1 for n in lengths]), torch.tensor(lengths))
        for i, name in enumerate(("out", "dq", "dk", "dv")):
            kernel, same, exact = runs[0][i], runs[1][i], runs[2][i]
            if name in ("dq", "dk"):
                assert torch.count_nonzero(kernel[single]) == 0, f"case {seed} {name}: a 1-token segment's is not 0"
                kernel, same, exact = kernel[~single], same[~single], exact[~single]
            _rule(name, kernel, same, exact, dtype, seed)
