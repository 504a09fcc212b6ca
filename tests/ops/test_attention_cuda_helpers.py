"""The CUDA attention kernel's index arithmetic, run on the CPU (no GPU needed).

The helpers in csrc/include/vl3fast/attention_tc.h are __host__ __device__: the same code the kernels run
is reached here through test-only bindings (`_attn_tc_*`).  Checked:
- the block table and the work-item decoding of the upper-bound grid: every (segment, block) exactly
  once, in order, rows masked at segment ends, idle items past the end, clamping of malformed cu_seqlens;
- the MMA fragment coordinates: a CPU emulation of ldmatrix (PTX semantics) and mma.m16n8k16 fragment
  layouts (from the PTX ISA tables, written out independently below) reproduces exact matrix products for
  every operand layout the kernels use, including the accumulator -> A-operand reuse of P;
- workspace layout, shared-memory budgets and bank-conflict-free row strides;
- the device-side input checks and the grid-stride work loop (`_attn_tc_schedule`): results never depend
  on the max_seqlen hint, and a malformed cu_seqlens schedules no work (the kernels write NaN instead).
The kernels' full shared-memory address expressions run in the warp emulator (test_attention_cuda_emulator.py).
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from vl3fast._backend import core
from vl3fast.ops.attention import ATTENTION_CUDA_HEAD_DIMS

BLOCK = core._attn_tc_layout(1, 1, 1, 64, False)["block_m"]


def _cu(lengths):
    return [0] + list(np.cumsum(lengths, dtype=np.int64).tolist())


def _expected_items(cu, T, block):
    items = []
    for s in range(len(cu) - 1):
        b, e = cu[s], cu[s + 1]
        for j in range((e - b + block - 1) // block):
            items.append((s, j, b + j * block, min(block, e - b - j * block), b, e - b))
    return items


CASES = {
    "lengths_1_2_97_1025": [1, 2, 97, 1025],
    "empty_segments": [0, 5, 0, 0, 64, 0, 65, 0],
    "one_long_many_tiny": [4096] + [1, 2, 3] * 30,
    "exact_blocks": [64, 128, 192],
    "single_token": [1],
    "video16x336": [576] * 16,
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("block", [BLOCK, 32])
@pytest.mark.parametrize("hint", ["none", "exact", "loose"])
def test_work_items_cover_every_block_once(case, block, hint):
    lengths = CASES[case]
    cu, T = _cu(lengths), sum(lengths)
    max_seqlen = {"none": -1, "exact": max(lengths), "loose": max(lengths) + 100}[hint]
    plan = core._attn_tc_plan(cu, T, block, max_seqlen)
    expected = _expected_items(cu, T, block)
    # The table is the exclusive prefix sum of ceil(L / block).
    assert plan["block_start"] == [0] + list(np.cumsum([(n + block - 1) // block for n in lengths]).tolist())
    bound = plan["upper_bound"]
    assert len(expected) <= bound <= (T + len(lengths) * (block - 1)) // block
    items = plan["items"]
    assert [tuple(i) for i in items[: len(expected)]] == expected
    # Idle work items (upper-bound grid and beyond) exit early.
    assert all(i[0] == -1 for i in items[len(expected):])
    # Every token covered exactly once.
    covered = np.zeros(T, dtype=int)
    for seg, blk, row, rows, *_ in items[: len(expected)]:
        assert 1 <= rows <= block
        covered[row : row + rows] += 1
    assert (covered == 1).all()


def test_max_seqlen_shrinks_the_grid():
    lengths = [10] * 100  # 100 tiny segments: T/S bound is (1000 + 100*63)/64 = 114; the hint gives 100
    cu = _cu(lengths)
    assert core._attn_tc_plan(cu, 1000, BLOCK, -1)["upper_bound"] == (1000 + 100 * (BLOCK - 1)) // BLOCK
    assert core._attn_tc_plan(cu, 1000, BLOCK, 10)["upper_bound"] == 100


def test_random_packs_decode_exactly():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.choice([0, 1, 2, 63, 64, 65, rng.randint(0, 300)]) for _ in range(rng.randint(1, 12))]
        cu, T = _cu(lengths), sum(lengths)
        plan = core._attn_tc_plan(cu, T, BLOCK, -1)
        expected = _expected_items(cu, T, BLOCK)
        assert [tuple(i) for i in plan["items"][: len(expected)]] == expected
        assert all(i[0] == -1 for i in plan["items"][len(expected):])


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("hint", ["none", "zero", "one", "half", "exact"])
def test_grid_stride_loop_computes_every_block_once_whatever_the_hint(case, hint):
    """The kernels loop over work items up to the device-derived count: a max_seqlen hint below the longest
    segment (or 0) shrinks the launched grid but never leaves a block uncomputed."""
    lengths = CASES[case]
    cu, T = _cu(lengths), sum(lengths)
    longest = max(lengths)
    max_seqlen = {"none": -1, "zero": 0, "one": 1, "half": longest // 2, "exact": longest}[hint]
    sched = core._attn_tc_schedule(cu, T, BLOCK, max_seqlen)
    assert sched["grid"] >= 1 and not sched["bad_cu_seqlens"]
    assert sched["max_seqlen_too_small"] == (0 <= max_seqlen < longest)
    done = sorted(item for cta in sched["per_cta"] for item in cta)
    assert done == sorted(i[:4] for i in _expected_items(cu, T, BLOCK))


@pytest.mark.parametrize(("cu", "T"), [([0, 50, 20, 100], 100), ([0, 200, 300], 100), ([-5, 40, 100], 100),
                                       ([0, 100, 100, 90], 100), ([0, 50], 100), ([3], 0), ([0], 5)])
def test_device_side_check_flags_a_malformed_cu_seqlens_and_schedules_nothing(cu, T):
    """The scan's check (csrc/cuda/attention.cu) is the shared segment_status(): the kernels then NaN-fill
    every output instead of computing (and checked mode raises a ValueError naming cu_seqlens)."""
    sched = core._attn_tc_schedule(cu, T, BLOCK, -1)
    assert sched["bad_cu_seqlens"] and not sched["max_seqlen_too_small"]
    assert all(cta == [] for cta in sched["per_cta"])


def test_device_side_check_passes_well_formed_inputs():
    for lengths in CASES.values():
        sched = core._attn_tc_schedule(_cu(lengths), sum(lengths), BLOCK, max(lengths))
        assert sched["status"] == 0
    assert core._attn_tc_schedule([0], 0, BLOCK, -1)["status"] == 0


@pytest.mark.parametrize("head_dim", [4, 48, 72, 256])
@pytest.mark.parametrize("backward", [False, True])
def test_simple_kernel_workspace_and_shared_memory(head_dim, backward):
    T, S, H = 1025, 7, 3
    w = core._attn_simple_layout(T, S, H, head_dim, backward)
    regions = [("status", 4), ("block_start", (S + 1) * 4), ("cos_sin", T * head_dim // 2 * 8)]
    if backward:
        regions.append(("delta", H * T * 4))
    spans = sorted((w[name], w[name] + size) for name, size in regions)
    for (b0, e0), (b1, _) in zip(spans, spans[1:]):
        assert e0 <= b1
    assert spans[-1][1] <= w["total"]
    assert core.rope2d_attention_workspace_bytes(T, S, H, head_dim, backward, 0, "cuda_simple") == w["total"]
    # fp32 [16 x D] tiles (3 forward, 4 backward) plus score tiles: within sm80's 227 KiB opt-in limit.
    assert w["fwd_smem"] == 4 * (3 * 16 * head_dim + 16 * 16 + 3 * 16)
    assert w["bwd_smem"] == 4 * (4 * 16 * head_dim + 2 * 16 * 16 + 2 * 16)
    assert max(w["fwd_smem"], w["bwd_smem"]) <= 227 * 1024 and w["max_head_dim"] == 256


@pytest.mark.parametrize("cu", [[0, 50, 20, 100], [0, 200, 300], [-5, 40, 100], [0, 100, 100, 90]])
def test_malformed_cu_seqlens_stay_in_bounds(cu):
    """CUDA inputs are not validated on the host (that would sync): the helpers clamp to [0, T)."""
    T = 100
    plan = core._attn_tc_plan(cu, T, BLOCK, -1)
    for seg, blk, row, rows, seg_begin, seg_len in plan["items"]:
        if seg < 0:
            continue
        assert 0 <= seg_begin and seg_begin + seg_len <= T
        assert seg_begin <= row and row + rows <= seg_begin + seg_len and rows >= 1


# ------------------------------------------------------------------------ fragment-level emulation
# PTX ISA, "Matrix fragments for mma.m16n8k16" (16-bit types) and ldmatrix: g = lane // 4, c = lane % 4.
def _a_frag_ptx(A, lane):  # A 16x16 [m][k] -> 4 regs of 2 values
    g, c = lane // 4, lane % 4
    return [(A[g, 2 * c], A[g, 2 * c + 1]), (A[g + 8, 2 * c], A[g + 8, 2 * c + 1]),
            (A[g, 2 * c + 8], A[g, 2 * c + 9]), (A[g + 8, 2 * c + 8], A[g + 8, 2 * c + 9])]


def _b_frag_ptx(B, lane):  # B 16x8 [k][n] -> 2 regs
    g, c = lane // 4, lane % 4
    return [(B[2 * c, g], B[2 * c + 1, g]), (B[2 * c + 8, g], B[2 * c + 9, g])]


def _mma(a_regs, b_regs, frags):
    """Reassemble A, B from per-lane registers (PTX layout), multiply; return C [16][8]."""
    A = np.full((16, 16), np.nan)
    B = np.full((16, 8), np.nan)
    for lane in range(32):
        g, c = lane // 4, lane % 4
        for r, (row, col) in enumerate([(g, 2 * c), (g + 8, 2 * c), (g, 2 * c + 8), (g + 8, 2 * c + 8)]):
            A[row, col], A[row, col + 1] = a_regs[lane][r]
        for r, k in enumerate([2 * c, 2 * c + 8]):
            B[k, g], B[k + 1, g] = b_regs[lane][r]
    assert not np.isnan(A).any() and not np.isnan(B).any()
    C = A @ B
    # Distribute C with the helpers' accumulator coordinates.
    out = np.full((16, 8), np.nan)
    for lane in range(32):
        for i in range(4):
            row, col = frags["c"][lane][i]
            assert np.isnan(out[row, col]), "two lanes claim one accumulator element"
            out[row, col] = C[row, col]
    return out, C


def _ldmatrix(smem, addrs, count, trans):
    """PTX ldmatrix: matrix j's row i is the 8 elements at the address of lane 8j + i; lane l receives
    (row l//4, cols 2(l%4), +1) of each matrix, or with .trans (rows 2(l%4), +1; col l//4)."""
    regs = [[None] * count for _ in range(32)]
    for j in range(count):
        M = np.stack([smem[addrs[8 * j + i][0], addrs[8 * j + i][1] : addrs[8 * j + i][1] + 8] for i in range(8)])
        for lane in range(32):
            g, c = lane // 4, lane % 4
            regs[lane][j] = (M[2 * c, g], M[2 * c + 1, g]) if trans else (M[g, 2 * c], M[g, 2 * c + 1])
    return regs


@pytest.fixture(scope="module")
def frags():
    return core._attn_tc_fragments()


def _rand(shape, seed):
    return np.random.default_rng(seed).integers(-8, 8, size=shape).astype(np.float64)


def test_accumulator_coordinates_cover_the_tile(frags):
    seen = {tuple(rc) for lane in frags["c"] for rc in lane}
    assert seen == {(r, c) for r in range(16) for c in range(8)}


def test_a_row_major_times_b_n_major(frags):
    """S = Q K^T: A from Q [m][k] (ldmatrix x4), B from K [n][k] (x4 = two n-tiles), as the kernels load them."""
    Q, K = _rand((16, 16), 1), _rand((16, 16), 2)  # K: 16 keys (two n-tiles) x 16 channels
    a = _ldmatrix(Q, [tuple(frags["a"][l]) for l in range(32)], 4, trans=False)
    b = _ldmatrix(K, [tuple(frags["b_nmajor"][l]) for l in range(32)], 4, trans=False)
    for tile in range(2):
        out, _ = _mma(a, [[b[l][2 * tile], b[l][2 * tile + 1]] for l in range(32)], frags)
        np.testing.assert_array_equal(out, Q @ K[8 * tile : 8 * tile + 8].T)
    # The PTX A layout itself, as a cross-check of the emulator.
    for lane in range(32):
        assert a[lane] == _a_frag_ptx(Q, lane)


def test_b_k_major_transposed(frags):
    """O += P V: B from V [k][n] with ldmatrix.trans x4 (two n-tiles) and x2 (odd last tile, lanes % 16)."""
    P, V = _rand((16, 16), 3), _rand((16, 24), 4)
    a = [_a_frag_ptx(P, lane) for lane in range(32)]
    b = _ldmatrix(V, [tuple(frags["b_kmajor"][l]) for l in range(32)], 4, trans=True)
    for tile in range(2):
        regs = [[b[l][2 * tile], b[l][2 * tile + 1]] for l in range(32)]
        for lane in range(32):
            assert regs[lane] == _b_frag_ptx(V[:, 8 * tile : 8 * tile + 8], lane)
        out, _ = _mma(a, regs, frags)
        np.testing.assert_array_equal(out, P @ V[:, 8 * tile : 8 * tile + 8])
    # x2 for the ninth n-tile of head dim 72: lanes 0..15 supply rows, column offset added by the kernel.
    addrs = [(frags["b_kmajor"][l % 16][0], frags["b_kmajor"][l % 16][1] + 16) for l in range(32)]
    b2 = _ldmatrix(V, addrs, 2, trans=True)
    out, _ = _mma(a, b2, frags)
    np.testing.assert_array_equal(out, P @ V[:, 16:24])


def test_a_k_major_transposed(frags):
    """dQ = dS K: A from dS^T stored [k][m] with ldmatrix.trans x4."""
    dS = _rand((16, 16), 5)  # [m = queries][k = keys]
    stored = dS.T.copy()  # the kernel stores dS^T [key][query]
    a = _ldmatrix(stored, [tuple(frags["a_kmajor"][l]) for l in range(32)], 4, trans=True)
    for lane in range(32):
        assert a[lane] == _a_frag_ptx(dS, lane)


def test_accumulator_reused_as_a_operand(frags):
    """P (two 16x8 accumulator tiles) packed as (c0,c1), (c2,c3) of tile 2kk, then of 2kk+1 = A fragment."""
    P = _rand((16, 16), 6)
    for lane in range(32):
        acc0 = [P[frags["c"][lane][i][0], frags["c"][lane][i][1]] for i in range(4)]
        acc1 = [P[frags["c"][lane][i][0], frags["c"][lane][i][1] + 8] for i in range(4)]
        regs = [(acc0[0], acc0[1]), (acc0[2], acc0[3]), (acc1[0], acc1[1]), (acc1[2], acc1[3])]
        assert regs == _a_frag_ptx(P, lane)


# ------------------------------------------------------------------------ layout and budgets
@pytest.mark.parametrize("head_dim", ATTENTION_CUDA_HEAD_DIMS)
@pytest.mark.parametrize("backward", [False, True])
def test_workspace_layout(head_dim, backward):
    T, S, H = 1025, 7, 3
    w = core._attn_tc_layout(T, S, H, head_dim, backward)
    dq = w["qk_dim"]
    assert dq % 16 == 0 and dq - head_dim < 16 and (head_dim != 72 or dq == 80)
    regions = [("status", 4), ("block_start", (S + 1) * 4), ("cos_sin", T * head_dim // 2 * 8),
               ("k_rot", H * T * dq * 2)]
    if backward:
        regions += [("q_rot", H * T * dq * 2), ("delta", H * T * 4), ("dq_accum", H * T * head_dim * 4)]
    spans = sorted((w[name], w[name] + size) for name, size in regions)
    for (b0, e0), (b1, _) in zip(spans, spans[1:]):
        assert e0 <= b1
    assert spans[-1][1] <= w["total"]
    assert all(w[name] % 256 == 0 for name, _ in regions)
    assert core.rope2d_attention_workspace_bytes(T, S, H, head_dim, backward, 0) == w["total"]


@pytest.mark.parametrize("head_dim", ATTENTION_CUDA_HEAD_DIMS)
def test_shared_memory_budget_and_bank_conflict_free_rows(head_dim):
    w = core._attn_tc_layout(64, 1, 1, head_dim, True)
    # sm80 has 164 KiB of shared memory per SM (1 KiB reserved per CTA): at least 2 CTAs per SM there.
    for smem in (w["fwd_smem"], w["bwd_smem"]):
        assert 2 * (smem + 1024) <= 164 * 1024
    for stride in (w["row_stride_qk"], w["row_stride_v"]):
        assert stride % 8 == 0 and (stride // 8) % 2 == 1  # odd number of 16-byte chunks
        # The 8 row addresses of one ldmatrix 8x8 matrix hit 8 distinct 16-byte bank groups.
        groups = {(r * stride * 2 // 16) % 8 for r in range(8)}
        assert len(groups) == 8
    assert w["row_stride_qk"] >= w["qk_dim"] and w["row_stride_v"] >= head_dim


def test_supported_list_is_the_single_declaration():
    cfg = core.attention_cuda_configs()
    assert tuple(cfg["head_dims"]) == ATTENTION_CUDA_HEAD_DIMS == (64, 72, 80, 96, 128)
    assert sorted(cfg["dtypes"]) == [1, 2]  # bfloat16, float16 (dtype.h codes)
