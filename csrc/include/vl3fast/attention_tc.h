// The CUDA tensor-core rope2d attention (csrc/cuda/attention_fwd.cu, attention_bwd.cu): the supported
// dtype x head-dim list (declared once), the tile configuration with its reasons, the workspace layout,
// and all index arithmetic as __host__ __device__ helpers, so that CPU tests (through the test-only
// bindings `_attn_tc_*` in csrc/bindings/testing.cpp) exercise the exact code the GPU runs and GPU time goes
// only to fragment-level code.
//
// Tile configuration (all kernels: 4 warps = 128 threads per CTA):
// - Forward: a CTA owns 64 queries of one (segment, head); each warp owns 16 query rows (one m16 MMA
//   row tile), so the online-softmax row max/sum need only 4-lane shuffles and no shared memory.  Keys
//   stream in tiles of 64 (8 n8 tiles of S per warp: 32 fp32 registers), double-buffered with cp.async.
//   64x64 is the FA2 sm80 choice for head dims <= 128: a 16-row warp tile keeps O (D/8 x 4 fp32) + S (32)
//   + the Q fragments (D_qk/16 x 4) under ~170 registers at D=128, and 64-query blocks keep the tail
//   waste of short segments (a 27x27 frame = 729 tokens -> 12 blocks, last one 25/64 full) small.
// - Head dims are padded only where the MMA forces it.  QK^T contracts over D: k-steps of 16, so
//   D_qk = round_up(D, 16) (72 -> 80, 5 k-steps; 64/80/96/128 unchanged), with the pad channels zero in
//   shared memory.  PV has D as the MMA n dimension: n-tiles of 8, so exactly D/8 tiles (72 -> 9).
//   Useful fraction at D=72: 72/80 on QK^T and 72/72 on PV, against 72/96 for a 96-wide kernel.
// - Shared-memory rows are padded to an odd number of 16-byte chunks (row_stride below), so the 8 row
//   addresses of one ldmatrix 8x8 matrix fall in 8 different bank groups (conflict-free, no swizzle).
// - Backward (FA2 style, one CTA per (segment, head, 64-key block)): each warp owns 16 keys, keeps dK and
//   dV (2 x D/8 x 4 fp32) in registers and walks the segment's query tiles.  The query tile is 64 for
//   D <= 96 and 32 for D = 128 (S^T and dP^T are then 16 fp32 registers each instead of 32), which keeps
//   the D=128 instantiation under the 255-register limit without spills.  dQ is accumulated with fp32
//   atomics (red.global.add) into a workspace and converted in a small epilogue kernel: non-deterministic
//   in the last bits of dq (summation order of atomics), deterministic for dk and dv.
// - RoPE: one fused pre-pass per call computes cos/sin of every token's D/2 angles (fp32, as transformers)
//   into a [T, D/2] float2 table and writes rotated k in the layout the kernel wants: head-major
//   [H, T, D_qk], pad channels zero, 16-byte aligned rows, so K tiles are plain cp.async copies.  Chosen
//   over rotating K inside the kernel because a K tile is read by every query block of its segment
//   (ceil(L/64) times) and in-kernel rotation repeats the work that often, in the CTA's critical path.
//   The pre-pass is not free: it moves T x H x (2 D + 2 D_qk) bytes plus the table, which by a bandwidth
//   estimate (not measured) is ~15-20% of the forward's time at L = 729 (one 27x27 frame) on an H100 and
//   less for longer segments.  Which one is faster is for the GPU session to measure.  q is rotated in the
//   forward kernel when its tile is loaded (each q tile is loaded exactly once).  The backward reads each
//   q tile once per key block, so its pre-pass writes rotated q too.  Measuring the in-kernel K variant
//   is left to the GPU session.
// - No host sync: a one-CTA scan kernel turns cu_seqlens into block_start[S + 1] (work items before each
//   segment) and checks cu_seqlens and the max_seqlen hint on the device (status flags below).  The grid
//   is sized from T and S (and max_seqlen when given), but each forward CTA loops over work items
//   blockIdx.x, blockIdx.x + gridDim.x, ... up to the device-derived count block_start[S] (binary search for
//   its (segment, block)), so results never depend on the hint: a hint below the longest segment only costs
//   speed.  The backward never uses the hint for its grid (one work item per CTA of the T/S bound).  A malformed cu_seqlens makes every output NaN (defined, never uninitialised memory).
//   VL3FAST_CUDA_DEBUG=1 (csrc/cuda/check.cuh) turns both into a ValueError naming the argument.
#pragma once
#include <cstdint>

#include "vl3fast/host_device.h"
#include "vl3fast/table_search.h"

// The supported CUDA matrix, declared once: instantiation (attention_*.cu), dispatch (the switch in
// attention_tc_dispatch with its erroring default), and the Python-side list (core.attention_cuda_configs,
// which the ops validation and the CUDA tests parametrize from).
#define VL3FAST_ATTN_TC_HEAD_DIMS(X) X(64) X(72) X(80) X(96) X(128)
// dtype codes (vl3fast::DType) with their CUDA storage types, bound by the .cu files.
#define VL3FAST_ATTN_TC_DTYPES(X) X(::vl3fast::DType::kBFloat16, __nv_bfloat16) X(::vl3fast::DType::kFloat16, __half)

namespace vl3fast::attn_tc {

constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = 4;
constexpr int kBlockM = 64;    // forward queries per CTA (16 per warp)
constexpr int kBlockN = 64;    // forward keys per tile; backward keys per CTA (16 per warp)
constexpr int kScanThreads = 1024;

VL3FAST_HD constexpr int round_up(int x, int m) { return (x + m - 1) / m * m; }
// Contraction width of QK^T (and of dP = dO V^T): k-steps of 16.
VL3FAST_HD constexpr int qk_dim(int head_dim) { return round_up(head_dim, 16); }
// Backward query tile (see the reasons above).
VL3FAST_HD constexpr int bwd_block_q(int head_dim) { return head_dim > 96 ? 32 : 64; }
// Elements per shared-memory row holding `cols` 16-bit values: an odd number of 16-byte chunks.
VL3FAST_HD constexpr int row_stride(int cols) { return ((cols + 7) / 8 | 1) * 8; }

// ---- segments and work items ---------------------------------------------------------------------

// Bounds of segment s, clamped so that even a malformed cu_seqlens (not checked on the device: no sync)
// never sends a kernel outside [0, T).
struct Segment {
  int64_t begin;
  int64_t length;
};
VL3FAST_HD Segment segment_bounds(const int32_t* cu_seqlens, int64_t s, int64_t num_tokens) {
  int64_t b = cu_seqlens[s], e = cu_seqlens[s + 1];
  b = b < 0 ? 0 : (b > num_tokens ? num_tokens : b);
  e = e < b ? b : (e > num_tokens ? num_tokens : e);
  return {b, e - b};
}

VL3FAST_HD int64_t blocks_of(int64_t length, int block) { return (length + block - 1) / block; }

// Device-side input checks (the scan kernel ORs these into the workspace's status word; no host sync).
constexpr int32_t kStatusBadCuSeqlens = 1;       // not 0-first, non-decreasing, last == T
constexpr int32_t kStatusMaxSeqlenTooSmall = 2;  // a segment is longer than the max_seqlen hint

// Status bits of segment s (0 <= s < S) of cu_seqlens [S + 1] for T tokens and the hint (< 0: none).
VL3FAST_HD int32_t segment_status(const int32_t* cu_seqlens, int64_t s, int64_t num_segments, int64_t num_tokens,
                                  int64_t max_seqlen) {
  const int64_t b = cu_seqlens[s], e = cu_seqlens[s + 1];
  int32_t status = 0;
  if ((s == 0 && b != 0) || e < b || e > num_tokens || (s == num_segments - 1 && e != num_tokens))
    status |= kStatusBadCuSeqlens;
  if (max_seqlen >= 0 && e - b > max_seqlen) status |= kStatusMaxSeqlenTooSmall;
  return status;
}
// With no segment (cu_seqlens == [c]), only c == 0 and T == 0 is consistent.
VL3FAST_HD int32_t no_segment_status(const int32_t* cu_seqlens, int64_t num_tokens) {
  return cu_seqlens[0] != 0 || num_tokens != 0 ? kStatusBadCuSeqlens : 0;
}

// Grid size without reading cu_seqlens: sum_s ceil(L_s / B) <= (T + S (B - 1)) / B since sum L_s = T; with
// max_seqlen (>= every L_s, or < 0 when unknown) also <= S ceil(max_seqlen / B).
VL3FAST_HD int64_t work_items_upper_bound(int64_t num_tokens, int64_t num_segments, int block, int64_t max_seqlen) {
  int64_t bound = (num_tokens + num_segments * (block - 1)) / block;
  if (max_seqlen >= 0) {
    const int64_t by_max = num_segments * blocks_of(max_seqlen, block);
    if (by_max < bound) bound = by_max;
  }
  return bound;
}
// The launched grid: the bound, but at least one CTA (the CTAs loop up to the device-derived count, so
// even a hint of 0 gets every block computed).
VL3FAST_HD int64_t launch_grid_x(int64_t num_tokens, int64_t num_segments, int block, int64_t max_seqlen) {
  const int64_t bound = work_items_upper_bound(num_tokens, num_segments, block, max_seqlen);
  return bound > 0 ? bound : 1;
}

// One step of the block-table scan: block_start[s + 1] = block_start[s] + blocks of segment s.  The
// device scan kernel and the host test helper both sum these counts.
VL3FAST_HD int64_t segment_blocks(const int32_t* cu_seqlens, int64_t s, int64_t num_tokens, int block) {
  return blocks_of(segment_bounds(cu_seqlens, s, num_tokens).length, block);
}

struct WorkItem {
  int64_t segment;  // -1: idle (past the last work item)
  int64_t block;    // block index inside the segment
  int64_t row_begin;  // first token of the block
  int rows;           // valid tokens in the block (1..block)
  int64_t seg_begin;
  int64_t seg_length;
};

// Work item w -> (segment, block): the last segment s with block_start[s] <= w (empty segments have
// block_start[s] == block_start[s + 1] and are skipped by taking the last such s).
VL3FAST_HD WorkItem decode_work_item(const int32_t* block_start, const int32_t* cu_seqlens, int64_t num_segments,
                                     int64_t num_tokens, int block, int64_t w) {
  WorkItem it{-1, 0, 0, 0, 0, 0};
  if (num_segments <= 0 || w < 0 || w >= block_start[num_segments]) return it;
  const int64_t lo = last_row_at_most(block_start, num_segments, 1, 0, w);
  const Segment seg = segment_bounds(cu_seqlens, lo, num_tokens);
  it.segment = lo;
  it.block = w - block_start[lo];
  it.seg_begin = seg.begin;
  it.seg_length = seg.length;
  it.row_begin = seg.begin + it.block * block;
  const int64_t left = seg.length - it.block * block;
  it.rows = static_cast<int>(left < block ? left : block);
  return it;
}

// Masking at segment ends: a row/column index local to a tile is valid when below the tile's count.
VL3FAST_HD int tile_count(int64_t seg_length, int64_t tile_start_local, int tile) {
  const int64_t left = seg_length - tile_start_local;
  return static_cast<int>(left <= 0 ? 0 : (left < tile ? left : tile));
}

// ---- MMA m16n8k16 fragment coordinates (PTX ISA "Matrix fragments for mma.m16n8k16") ---------------
// g = lane / 4 (row group), c = lane % 4 (column pair).

// Accumulator element i (0..3) of `lane`: row and column inside the 16x8 tile.
VL3FAST_HD int frag_c_row(int lane, int i) { return lane / 4 + (i >= 2 ? 8 : 0); }
VL3FAST_HD int frag_c_col(int lane, int i) { return 2 * (lane % 4) + (i & 1); }

// ldmatrix.x4 addresses (row, col of the 8-wide chunk start) that each lane supplies.
// A operand (16x16 tile, smem row-major [m][k]), non-transposed: matrices (m0-7,k0) (m8-15,k0) (m0-7,k8) (m8-15,k8).
VL3FAST_HD int ldsm_a_row(int lane) { return lane % 16; }
VL3FAST_HD int ldsm_a_col(int lane) { return (lane / 16) * 8; }
// B operands of two n8 tiles, smem stored [n][k] (n-major), non-transposed: regs (b0,b1) of tile n0, then of n0+8.
VL3FAST_HD int ldsm_bn_row(int lane) { return (lane / 16) * 8 + lane % 8; }       // n
VL3FAST_HD int ldsm_bn_col(int lane) { return ((lane / 8) % 2) * 8; }             // k
// B operands of two n8 tiles, smem stored [k][n] (k-major), transposed: same register order.
VL3FAST_HD int ldsm_bk_row(int lane) { return lane % 8 + ((lane / 8) % 2) * 8; }  // k
VL3FAST_HD int ldsm_bk_col(int lane) { return (lane / 16) * 8; }                  // n
// A operand (16x16), smem stored [k][m] (k-major), transposed: regs a0..a3.
VL3FAST_HD int ldsm_ak_row(int lane) { return lane % 8 + (lane / 16) * 8; }       // k
VL3FAST_HD int ldsm_ak_col(int lane) { return ((lane / 8) % 2) * 8; }             // m

// ---- the kernels' shared-memory address expressions -----------------------------------------------
// Element offsets (16-bit elements) into a row-major shared tile of row stride `ld`, for the sub-tile whose
// top-left element is (row0, col0).  The kernels compute every ldmatrix address and fragment store with
// these (and nothing else), so the CPU warp emulator (tests/ops/test_attention_cuda_emulator.py, through
// `_attn_tc_offsets`) executes the kernels' own expressions, base offsets included.
VL3FAST_HD int ldsm_a_offset(int row0, int col0, int lane, int ld) {
  return (row0 + ldsm_a_row(lane)) * ld + col0 + ldsm_a_col(lane);
}
VL3FAST_HD int ldsm_bn_offset(int row0, int col0, int lane, int ld) {
  return (row0 + ldsm_bn_row(lane)) * ld + col0 + ldsm_bn_col(lane);
}
VL3FAST_HD int ldsm_bk_offset(int row0, int col0, int lane, int ld) {
  return (row0 + ldsm_bk_row(lane)) * ld + col0 + ldsm_bk_col(lane);
}
// x2 (one n8 tile of a k-major B operand): lanes 0..15 supply the rows.
VL3FAST_HD int ldsm_bk_x2_offset(int row0, int col0, int lane, int ld) {
  return (row0 + ldsm_bk_row(lane % 16)) * ld + col0;
}
VL3FAST_HD int ldsm_ak_offset(int row0, int col0, int lane, int ld) {
  return (row0 + ldsm_ak_row(lane)) * ld + col0 + ldsm_ak_col(lane);
}
// Destination of 16-byte chunk c of tile row r (cp.async loads).
VL3FAST_HD int chunk_offset(int r, int c, int ld) { return r * ld + c * 8; }
// Accumulator element i of `lane` in the 16 x 8 tile at (row0, col0) (epilogue stores, dS^T staging).
VL3FAST_HD int frag_c_offset(int row0, int col0, int lane, int i, int ld) {
  return (row0 + frag_c_row(lane, i)) * ld + col0 + frag_c_col(lane, i);
}

// Forward: shared carve-up (elements) and the base offsets of each ldmatrix.
struct FwdSmem {
  int k0, v0, q0;  // K buffers (2 x kBlockN rows), V buffers, the Q tile (aliases K buffer 1)
  int k_buf, v_buf;  // elements per K / V buffer
};
VL3FAST_HD constexpr FwdSmem fwd_smem(int head_dim) {
  const int sq = row_stride(qk_dim(head_dim)), sv = row_stride(head_dim);
  return {0, 2 * kBlockN * sq, kBlockN * sq, kBlockN * sq, kBlockN * sv};
}
// Q fragment of warp `warp`, k-step kk (A, [query][channel]).
VL3FAST_HD int fwd_q_frag(int warp, int kk, int lane, int sq) { return ldsm_a_offset(warp * 16, kk * 16, lane, sq); }
// K fragments of n-tiles 2np, 2np+1, k-step kk (B, [key][channel]).
VL3FAST_HD int fwd_k_frag(int np, int kk, int lane, int sq) { return ldsm_bn_offset(np * 16, kk * 16, lane, sq); }
// V fragments of k-step kk (keys) and n-tiles 2np, 2np+1 (channels) (B, [key][channel], .trans).
VL3FAST_HD int fwd_v_frag(int kk, int np, int lane, int sv) { return ldsm_bk_offset(kk * 16, np * 16, lane, sv); }
// The odd last n-tile of P V (head dim 72: tile 8), x2.
VL3FAST_HD int fwd_v_frag_last(int kk, int ntd, int lane, int sv) {
  return ldsm_bk_x2_offset(kk * 16, (ntd - 1) * 8, lane, sv);
}
// Channels of rotation pair j of the Q tile: (j, j + D/2), or pad channels (D + 2(j - D/2), +1) past D/2.
VL3FAST_HD int fwd_q_pair_channel(int j, int head_dim, int second) {
  const int half = head_dim / 2;
  return j < half ? j + second * half : head_dim + 2 * (j - half) + second;
}
// Output row of accumulator half r (0: rows g, 1: rows g + 8) of `warp`, and its first column in n-tile t.
VL3FAST_HD int out_frag_row(int warp, int lane, int r) { return warp * 16 + frag_c_row(lane, 2 * r); }
VL3FAST_HD int out_frag_col(int t, int lane) { return t * 8 + frag_c_col(lane, 0); }

// Backward: shared carve-up (elements; lse and delta follow as fp32) and the base offsets.
struct BwdSmem {
  int k0, v0, q0, do0, ds0, stats_byte;  // stats_byte: byte offset of lse_s[BQ] then delta_s[BQ]
};
VL3FAST_HD constexpr BwdSmem bwd_smem(int head_dim) {
  const int sq = row_stride(qk_dim(head_dim)), bq = bwd_block_q(head_dim), ss = row_stride(bq);
  const int q0 = 2 * kBlockN * sq, do0 = q0 + bq * sq, ds0 = do0 + bq * sq;
  return {0, kBlockN * sq, q0, do0, ds0, 2 * (ds0 + kBlockN * ss)};
}
// K and V as A operands (this warp's 16 keys, k-step kk over channels).
VL3FAST_HD int bwd_kv_frag(int warp, int kk, int lane, int sq) { return ldsm_a_offset(warp * 16, kk * 16, lane, sq); }
// Q and dO as B operands (n-tiles 2np, 2np+1 of queries, k-step kk).
VL3FAST_HD int bwd_qdo_frag(int np, int kk, int lane, int sq) { return ldsm_bn_offset(np * 16, kk * 16, lane, sq); }
// dV += P^T dO and dK += dS^T Q: B from dO / Q stored [query][channel], k-step kk (queries), n-tiles of
// channels starting at col0 (0, or grp * NTG * 8 for dQ's K operand).
VL3FAST_HD int bwd_rows_frag(int kk, int col0, int np, int lane, int ld) {
  return ldsm_bk_offset(kk * 16, col0 + np * 16, lane, ld);
}
VL3FAST_HD int bwd_rows_frag_last(int kk, int col0, int nt, int lane, int ld) {
  return ldsm_bk_x2_offset(kk * 16, col0 + (nt - 1) * 8, lane, ld);
}
// dS^T staging [key][query]: accumulator element pair (i = 0: rows g, i = 2: rows g + 8) of query n-tile
// 2kk + half of `warp`'s keys; stored as one 32-bit pair.
VL3FAST_HD int bwd_ds_store(int warp, int kk, int half, int lane, int i, int ss) {
  return frag_c_offset(warp * 16, (2 * kk + half) * 8, lane, i, ss);
}
// dQ's A operand: dS from the dS^T staging (.trans), k-step kk (keys), m-tile mt (queries).
VL3FAST_HD int bwd_ds_frag(int kk, int mt, int lane, int ss) { return ldsm_ak_offset(kk * 16, mt * 16, lane, ss); }
// dQ scatter: row (query in the tile) and column (channel) of accumulator element i of n-tile t of group grp.
VL3FAST_HD int bwd_dq_row(int mt, int lane, int i) { return mt * 16 + frag_c_row(lane, i); }
VL3FAST_HD int bwd_dq_col(int grp, int ntg, int t, int lane, int i) { return (grp * ntg + t) * 8 + frag_c_col(lane, i); }

// ---- workspace ----------------------------------------------------------------------------------

VL3FAST_HD int64_t align256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

// The regions every CUDA attention workspace starts with (this kernel's and the simple kernel's,
// attention_simple.h), written by the call's first pre-passes.
struct WorkspaceHead {
  int64_t status = 0;       // int32 [1]: kStatus* bits of the device-side input checks
  int64_t block_start = 0;  // int32 [S + 1]: work items (blocks of the kernel's rows) before each segment
  int64_t cos_sin = 0;      // float2 [T, D/2]: (cos, sin) of each token's pair angles
  int64_t head_end = 0;     // the first byte after them
};

VL3FAST_HD WorkspaceHead workspace_head(int64_t num_tokens, int64_t num_segments, int head_dim) {
  WorkspaceHead h;
  int64_t at = 0;
  h.status = at;
  at += align256(4);
  h.block_start = at;
  at += align256((num_segments + 1) * 4);
  h.cos_sin = at;
  at += align256(num_tokens * (head_dim / 2) * 8);
  h.head_end = at;
  return h;
}

struct Workspace : WorkspaceHead {
  int64_t k_rot = 0;        // bf16/fp16 [H, T, D_qk]: rotated k, pad channels zero
  int64_t q_rot = 0;        // backward: rotated q, same layout
  int64_t delta = 0;        // backward: float [H, T], rowsum(dout * out)
  int64_t dq_accum = 0;     // backward: float [H, T, D], scaled-free dq of the rotated q (atomics)
  int64_t total = 0;
};

VL3FAST_HD Workspace workspace_layout(int64_t num_tokens, int64_t num_segments, int num_heads, int head_dim,
                                      bool backward) {
  Workspace w;
  static_cast<WorkspaceHead&>(w) = workspace_head(num_tokens, num_segments, head_dim);
  const int64_t th = num_tokens * num_heads;
  int64_t at = w.head_end;
  w.k_rot = at;
  at += align256(th * qk_dim(head_dim) * 2);
  if (backward) {
    w.q_rot = at;
    at += align256(th * qk_dim(head_dim) * 2);
    w.delta = at;
    at += align256(th * 4);
    w.dq_accum = at;
    at += align256(th * head_dim * 4);
  }
  w.total = at;
  return w;
}

// Dynamic shared memory of the two main kernels (bytes); the launchers opt in above 48 KiB.
VL3FAST_HD constexpr int fwd_smem_bytes(int head_dim) {
  const int sq = row_stride(qk_dim(head_dim)), sv = row_stride(head_dim);
  return 2 * (2 * kBlockN * sq + 2 * kBlockN * sv);  // the Q tile aliases K buffer 1
}
VL3FAST_HD constexpr int bwd_smem_bytes(int head_dim) {
  const int sq = row_stride(qk_dim(head_dim)), bq = bwd_block_q(head_dim);
  return 2 * (2 * kBlockN * sq + 2 * bq * sq + kBlockN * row_stride(bq)) + 2 * bq * 4;
}

}  // namespace vl3fast::attn_tc
