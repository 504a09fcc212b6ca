"""A CPU warp emulator that executes the CUDA tensor-core kernels' shared-memory address expressions.

ldmatrix (x4/x2, plain and .trans) and mma.m16n8k16 are emulated from the PTX ISA tables, written out
here independently of the project's fragment helpers.  Every address comes from the kernels' own code:
`core._attn_tc_offsets(D)` evaluates the `__host__ __device__` helpers of csrc/include/vl3fast/attention_tc.h
that attention_fwd.cu and attention_bwd.cu call for every ldmatrix, cp.async destination, Q-tile store,
dS^T store and output / dQ scatter coordinate, over the kernels' loop ranges.  Shared memory is a NaN-filled
array of the launched size, written only where the kernels write (zero-filled cp.async chunks included),
so reading a padding column, a stale buffer or past the carve-up shows up as NaN.  Every product of both
kernels is compared exactly with numpy, for every compiled head dim.  (PTX ISA, "Warp-level matrix
instructions": ldmatrix; "Matrix fragments for mma.m16n8k16 with floating point type".)
"""
from __future__ import annotations

import numpy as np
import pytest

from vl3fast._backend import core
from vl3fast.ops.attention import ATTENTION_CUDA_HEAD_DIMS

LANES = np.arange(32)
G, C = LANES // 4, LANES % 4  # PTX: groupID, threadID_in_group


# ---------------------------------------------------------------- PTX semantics (independent of the helpers)
def ldmatrix(smem, addrs, count, trans):
    """regs[lane, j] = (lo, hi) of matrix j.  Matrix j's row i is the 8 elements at the address supplied by
    lane 8j + i (for x2 only lanes 0..15 supply addresses); lane l gets row l//4, elements 2(l%4), +1, or
    with .trans column l//4, rows 2(l%4), +1.  Addresses must be 16-byte aligned."""
    addrs = np.asarray(addrs)
    regs = np.empty((32, count, 2))
    for j in range(count):
        rows = addrs[8 * j : 8 * j + 8]
        assert (rows % 8 == 0).all(), "ldmatrix row address not 16-byte aligned"
        assert rows.min() >= 0 and rows.max() + 8 <= smem.size, "ldmatrix outside shared memory"
        M = smem[rows[:, None] + np.arange(8)]
        assert not np.isnan(M).any(), "ldmatrix read unwritten shared memory (NaN)"
        regs[:, j] = np.stack([M[2 * C, G], M[2 * C + 1, G]], 1) if trans else np.stack([M[G, 2 * C], M[G, 2 * C + 1]], 1)
    return regs


def a_matrix(a_regs):
    """16 x 16 A from the 4 registers per lane: (g, 2c..), (g+8, 2c..), (g, 2c+8..), (g+8, 2c+8..)."""
    A = np.full((16, 16), np.nan)
    for r, (dr, dc) in enumerate([(0, 0), (8, 0), (0, 8), (8, 8)]):
        A[G + dr, 2 * C + dc] = a_regs[:, r, 0]
        A[G + dr, 2 * C + dc + 1] = a_regs[:, r, 1]
    return A


def b_matrix(b0, b1):
    """16 x 8 B from 2 registers per lane: (2c.., g), (2c+8.., g)."""
    B = np.full((16, 8), np.nan)
    for r, dk in ((b0, 0), (b1, 8)):
        B[2 * C + dk, G] = r[:, 0]
        B[2 * C + dk + 1, G] = r[:, 1]
    return B


def c_of(lane_acc):
    """16 x 8 C from the 4 accumulators per lane: c0, c1 at (g, 2c), (g, 2c+1); c2, c3 at row g+8."""
    M = np.empty((16, 8))
    M[G, 2 * C], M[G, 2 * C + 1], M[G + 8, 2 * C], M[G + 8, 2 * C + 1] = lane_acc.T
    return M


def acc_of(M):
    """The inverse of c_of: per-lane accumulators of a 16 x 8 tile."""
    return np.stack([M[G, 2 * C], M[G, 2 * C + 1], M[G + 8, 2 * C], M[G + 8, 2 * C + 1]], 1)


def mma(acc, a_regs, b0, b1):
    """acc [32, 4] += A B (fp32 accumulate of 16-bit products: exact for the small integers used here)."""
    A, B = a_matrix(a_regs), b_matrix(b0, b1)
    assert not np.isnan(A).any() and not np.isnan(B).any()
    return acc + acc_of(A @ B)


def pack_a(acc_lo, acc_hi):
    """The kernels' accumulator -> A reuse: {pack2(c0, c1), pack2(c2, c3)} of n-tile 2kk, then of 2kk+1."""
    return np.stack([acc_lo[:, 0:2], acc_lo[:, 2:4], acc_hi[:, 0:2], acc_hi[:, 2:4]], 1)


def store_pair(smem, offsets, pairs):
    """A 32-bit store of two 16-bit values per lane (lo at the lower address)."""
    offsets = np.asarray(offsets)
    assert (offsets % 2 == 0).all(), "32-bit store not 4-byte aligned"
    smem[offsets], smem[offsets + 1] = pairs[:, 0], pairs[:, 1]


def ints(rng, shape):
    return rng.integers(-4, 5, size=shape).astype(np.float64)


def fill_chunks(smem, base, chunks, src, valid_rows, valid_chunks):
    """cp.async 16-byte chunks: (row, chunk, offset); rows/chunks past the valid range are zero-filled."""
    for r, c, off in chunks:
        ok = r < valid_rows and c < valid_chunks
        smem[base + off : base + off + 8] = src[r, c * 8 : c * 8 + 8] if ok else 0.0


@pytest.fixture(scope="module", params=ATTENTION_CUDA_HEAD_DIMS, ids=lambda d: f"D{d}")
def offsets(request):
    return core._attn_tc_offsets(request.param)


def test_forward_products_with_the_kernels_addresses(offsets):
    o, sh = offsets, offsets["shape"]
    D, DQ, KS, NTD, NTS, BM, BN = sh["D"], sh["DQ"], sh["KS"], sh["NTD"], sh["NTS"], sh["block_m"], sh["block_n"]
    L = o["fwd_smem"]
    rng = np.random.default_rng(D)
    smem = np.full(sh["fwd_smem_bytes"] // 2, np.nan)
    assert L["v0"] + 2 * L["v_buf"] == smem.size  # the carve-up is the launched size

    # Q tile (rotated values; rows past `rows` and the pad channels are zeros), stored as the kernel does.
    rows = BM - 5
    Q = ints(rng, (BM, D))
    Q[rows:] = 0
    for r, j, off0, off1 in o["fwd_q_store"]:
        lo, hi = (Q[r, j], Q[r, j + D // 2]) if j < D // 2 else (0.0, 0.0)
        smem[L["q0"] + off0], smem[L["q0"] + off1] = lo, hi
    Qp = np.pad(Q, ((0, 0), (0, DQ - D)))
    qf = [[ldmatrix(smem, L["q0"] + np.array(o["fwd_q_frag"][w][kk]), 4, False) for kk in range(KS)]
          for w in range(sh["warps"])]
    for w in range(sh["warps"]):
        for kk in range(KS):
            np.testing.assert_array_equal(a_matrix(qf[w][kk]), Qp[16 * w : 16 * w + 16, 16 * kk : 16 * kk + 16])

    # K (pre-pass layout: DQ channels, pad zeros) and V tiles in buffer `buf`, n keys valid.
    smem[L["q0"] : L["q0"] + L["k_buf"]] = np.nan  # Q's buffer is refilled by K (kernel: barrier, then load)
    for buf, n in ((0, BN), (1, BN - 17)):
        K = np.pad(ints(rng, (BN, D)), ((0, 0), (0, DQ - D)))
        V = ints(rng, (BN, D))
        fill_chunks(smem, L["k0"] + buf * L["k_buf"], o["fwd_k_chunks"], K, n, DQ // 8)
        fill_chunks(smem, L["v0"] + buf * L["v_buf"], o["fwd_v_chunks"], V, n, D // 8)
        K[n:], V[n:] = 0, 0
        for w in range(sh["warps"]):
            # S = Q K^T
            s = [np.zeros((32, 4)) for _ in range(NTS)]
            for kk in range(KS):
                for np_ in range(NTS // 2):
                    b = ldmatrix(smem, L["k0"] + buf * L["k_buf"] + np.array(o["fwd_k_frag"][np_][kk]), 4, False)
                    s[2 * np_] = mma(s[2 * np_], qf[w][kk], b[:, 0], b[:, 1])
                    s[2 * np_ + 1] = mma(s[2 * np_ + 1], qf[w][kk], b[:, 2], b[:, 3])
            S = np.concatenate([c_of(t) for t in s], 1)
            np.testing.assert_array_equal(S, Qp[16 * w : 16 * w + 16] @ K.T)
            # O = P V, P reused from the accumulators (random values in S's layout).
            P = ints(rng, (16, BN))
            p_acc = [acc_of(P[:, 8 * j : 8 * j + 8]) for j in range(NTS)]
            out = [np.zeros((32, 4)) for _ in range(NTD)]
            for kk in range(BN // 16):
                pa = pack_a(p_acc[2 * kk], p_acc[2 * kk + 1])
                for np_ in range(NTD // 2):
                    b = ldmatrix(smem, L["v0"] + buf * L["v_buf"] + np.array(o["fwd_v_frag"][kk][np_]), 4, True)
                    out[2 * np_] = mma(out[2 * np_], pa, b[:, 0], b[:, 1])
                    out[2 * np_ + 1] = mma(out[2 * np_ + 1], pa, b[:, 2], b[:, 3])
                if NTD % 2:
                    b = ldmatrix(smem, L["v0"] + buf * L["v_buf"] + np.array(o["fwd_v_frag_last"][kk]), 2, True)
                    out[NTD - 1] = mma(out[NTD - 1], pa, b[:, 0], b[:, 1])
            np.testing.assert_array_equal(np.concatenate([c_of(t) for t in out], 1), P @ V)


def test_forward_output_coordinates_cover_the_tile_once(offsets):
    o, sh = offsets, offsets["shape"]
    seen = np.zeros((sh["block_m"], sh["D"]), dtype=int)
    for w in range(sh["warps"]):
        for r in range(2):
            rows = np.array(o["out_row"][w][r])
            np.testing.assert_array_equal(rows, 16 * w + G + 8 * r)  # accumulator rows c0/c1 (r=0), c2/c3 (r=1)
            for t in range(sh["NTD"]):
                cols = np.array(o["out_col"][t])
                np.testing.assert_array_equal(cols, 8 * t + 2 * C)  # the pair (c, c+1) stored as one 32-bit word
                assert (cols % 2 == 0).all()
                np.add.at(seen, (rows, cols), 1)
                np.add.at(seen, (rows, cols + 1), 1)
    assert (seen == 1).all()


def test_backward_products_with_the_kernels_addresses(offsets):
    o, sh = offsets, offsets["shape"]
    D, DQ, KS, NTD, BQ, BN = sh["D"], sh["DQ"], sh["KS"], sh["NTD"], sh["BQ"], sh["block_n"]
    NTQ, MT, NG, NTG, SS = sh["NTQ"], sh["MT"], sh["G"], sh["NTG"], sh["SS"]
    L = o["bwd_smem"]
    rng = np.random.default_rng(100 + D)
    smem = np.full(sh["bwd_smem_bytes"] // 2, np.nan)
    assert L["stats_byte"] + 2 * BQ * 4 == sh["bwd_smem_bytes"]
    nk, nq = BN - 3, BQ - 7
    K = np.pad(ints(rng, (BN, D)), ((0, 0), (0, DQ - D)))
    V = np.pad(ints(rng, (BN, D)), ((0, 0), (0, DQ - D)))
    Q = np.pad(ints(rng, (BQ, D)), ((0, 0), (0, DQ - D)))
    dO = np.pad(ints(rng, (BQ, D)), ((0, 0), (0, DQ - D)))
    # K from the pre-pass (DQ wide); V and dO are D wide in global memory: chunks past D/8 zero-filled.
    fill_chunks(smem, L["k0"], o["bwd_kv_chunks"], K, nk, DQ // 8)
    fill_chunks(smem, L["v0"], o["bwd_kv_chunks"], V, nk, D // 8)
    fill_chunks(smem, L["q0"], o["bwd_qdo_chunks"], Q, nq, DQ // 8)
    fill_chunks(smem, L["do0"], o["bwd_qdo_chunks"], dO, nq, D // 8)
    K[nk:], V[nk:], Q[nq:], dO[nq:] = 0, 0, 0, 0

    dS_T = np.zeros((BN, BQ))
    for w in range(sh["warps"]):
        keys = slice(16 * w, 16 * w + 16)
        st = [np.zeros((32, 4)) for _ in range(NTQ)]
        dpt = [np.zeros((32, 4)) for _ in range(NTQ)]
        for kk in range(KS):
            ka = ldmatrix(smem, L["k0"] + np.array(o["bwd_kv_frag"][w][kk]), 4, False)
            va = ldmatrix(smem, L["v0"] + np.array(o["bwd_kv_frag"][w][kk]), 4, False)
            for np_ in range(NTQ // 2):
                b = ldmatrix(smem, L["q0"] + np.array(o["bwd_qdo_frag"][np_][kk]), 4, False)
                st[2 * np_] = mma(st[2 * np_], ka, b[:, 0], b[:, 1])
                st[2 * np_ + 1] = mma(st[2 * np_ + 1], ka, b[:, 2], b[:, 3])
                b = ldmatrix(smem, L["do0"] + np.array(o["bwd_qdo_frag"][np_][kk]), 4, False)
                dpt[2 * np_] = mma(dpt[2 * np_], va, b[:, 0], b[:, 1])
                dpt[2 * np_ + 1] = mma(dpt[2 * np_ + 1], va, b[:, 2], b[:, 3])
        np.testing.assert_array_equal(np.concatenate([c_of(t) for t in st], 1), K[keys] @ Q.T)  # S^T
        np.testing.assert_array_equal(np.concatenate([c_of(t) for t in dpt], 1), V[keys] @ dO.T)  # dP^T
        # dV += P^T dO and dK += dS^T Q with P^T, dS^T as accumulators (random, in S^T's layout).
        PT, dST = ints(rng, (16, BQ)), ints(rng, (16, BQ))
        dS_T[keys] = dST
        for Mat, rhs_base, rhs in ((PT, L["do0"], dO), (dST, L["q0"], Q)):
            acc = [acc_of(Mat[:, 8 * j : 8 * j + 8]) for j in range(NTQ)]
            res = [np.zeros((32, 4)) for _ in range(NTD)]
            for kk in range(BQ // 16):
                a = pack_a(acc[2 * kk], acc[2 * kk + 1])
                for np_ in range(NTD // 2):
                    b = ldmatrix(smem, rhs_base + np.array(o["bwd_rows_frag"][kk][np_]), 4, True)
                    res[2 * np_] = mma(res[2 * np_], a, b[:, 0], b[:, 1])
                    res[2 * np_ + 1] = mma(res[2 * np_ + 1], a, b[:, 2], b[:, 3])
                if NTD % 2:
                    b = ldmatrix(smem, rhs_base + np.array(o["bwd_rows_frag_last"][kk]), 2, True)
                    res[NTD - 1] = mma(res[NTD - 1], a, b[:, 0], b[:, 1])
                if Mat is dST:  # dS^T staged for dQ: 32-bit pairs (c0, c1) at rows g, (c2, c3) at rows g + 8
                    for half in range(2):
                        store_pair(smem, L["ds0"] + np.array(o["bwd_ds_store"][w][kk][half][0]), a[:, 2 * half])
                        store_pair(smem, L["ds0"] + np.array(o["bwd_ds_store"][w][kk][half][1]), a[:, 2 * half + 1])
            np.testing.assert_array_equal(np.concatenate([c_of(t) for t in res], 1), Mat @ rhs[:, :D])

    # The staging holds dS^T [key][query], columns BQ.. (row padding) stay NaN.
    staged = smem[L["ds0"] : L["ds0"] + BN * SS].reshape(BN, SS)
    np.testing.assert_array_equal(staged[:, :BQ], dS_T)
    assert np.isnan(staged[:, BQ:]).all()

    # dQ = dS K per (m-tile, group of n-tiles), A read back .trans from the staging; scatter coordinates.
    dQ = np.full((BQ, D), np.nan)
    for w in range(sh["warps"]):
        mt, grp = w % MT, w // MT
        acc = [np.zeros((32, 4)) for _ in range(NTG)]
        for kk in range(BN // 16):
            aa = ldmatrix(smem, L["ds0"] + np.array(o["bwd_ds_frag"][kk][mt]), 4, True)
            np.testing.assert_array_equal(a_matrix(aa), dS_T[16 * kk : 16 * kk + 16, 16 * mt : 16 * mt + 16].T)
            for np_ in range(NTG // 2):
                b = ldmatrix(smem, L["k0"] + np.array(o["bwd_dq_b"][kk][grp][np_]), 4, True)
                acc[2 * np_] = mma(acc[2 * np_], aa, b[:, 0], b[:, 1])
                acc[2 * np_ + 1] = mma(acc[2 * np_ + 1], aa, b[:, 2], b[:, 3])
            if NTG % 2:
                b = ldmatrix(smem, L["k0"] + np.array(o["bwd_dq_b_last"][kk][grp]), 2, True)
                acc[NTG - 1] = mma(acc[NTG - 1], aa, b[:, 0], b[:, 1])
        for t in range(NTG):
            for i in range(4):
                rows, cols = np.array(o["bwd_dq_row"][mt][i]), np.array(o["bwd_dq_col"][grp][t][i])
                assert np.isnan(dQ[rows, cols]).all(), "two warps scatter to one dQ element"
                dQ[rows, cols] = acc[t][:, i]
    np.testing.assert_array_equal(dQ, dS_T.T @ K[:, :D])


def test_emulator_catches_a_padding_read():
    """The emulator itself: an address one chunk to the right reads a padding column (NaN) and fails."""
    o = core._attn_tc_offsets(72)
    sh, L = o["shape"], o["fwd_smem"]
    smem = np.full(sh["fwd_smem_bytes"] // 2, np.nan)
    fill_chunks(smem, L["k0"], o["fwd_k_chunks"], np.ones((64, sh["DQ"])), 64, sh["DQ"] // 8)
    last = sh["KS"] - 1
    ldmatrix(smem, L["k0"] + np.array(o["fwd_k_frag"][0][last]), 4, False)  # the real address: fine
    with pytest.raises(AssertionError, match="unwritten shared memory"):
        ldmatrix(smem, L["k0"] + np.array(o["fwd_k_frag"][0][last]) + 8, 4, False)
