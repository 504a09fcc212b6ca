// Tile sizes and the workspace layout of the CPU rope2d attention kernel (csrc/cpu/kernels/attention.cpp).
// One place for these numbers: the bindings size the caller-allocated workspace with the same functions
// the kernel uses to carve it.
//
// Why these sizes:
// - 64 queries x 64 keys per tile: the fp32 tiles of one work item (Q, K^T, V, S, O: ~5 x 64 x 80 floats
//   for head dim 72) stay in L2 (>= 1 MiB per core on the x86 servers we target) while the 64-wide key
//   row of S is exactly four 512-bit vectors, so the q.k^T micro-kernel keeps 4 rows x 4 vectors of
//   accumulators in registers.
// - The forward takes 256 queries per work item: preparing a K/V tile (load, convert, rotate) is paid once
//   per 256 queries.  The fp32-tile forward puts the 256 queries along the vector lanes (S^T = K Q^T is
//   64 x 256, 16 zmm per key row; see Attention::forward_item), so neither K nor V is transposed and the
//   head dim is never padded in a product; the bf16 dot-product forward (kernels/attention_bf16.cpp) does the
//   same on pairs of bf16.
// - Head dims are padded to a multiple of 16 floats (one 512-bit vector) inside row-major tiles: 72 -> 80.
//   The backward's p.v-shaped products pay for the padding (80/72).
// - Work items are (segment, head, 64-query block) in one flat list scheduled dynamically, so one long
//   segment beside many tiny ones splits into many equal items and the threads stay busy.
#pragma once
#include <cstdint>

#include "vl3fast/host_device.h"
#include "vl3fast/rope_math.h"

namespace vl3fast::cpu {

constexpr int kAttnBlockQ = 64;      // backward query block
constexpr int kAttnBlockK = 64;      // key block (forward and backward)
constexpr int kAttnFwdBlockQ = 256;  // forward query block: each rotated K/V tile serves 256 queries
constexpr int kAttnMaxHeadDim = kMaxHeadDim;  // vl3fast/rope_math.h

// The head dims with a compile-time fast path: VideoLLaMA3 (72), the Qwen2-VL family (80) and common ViTs.
// Any other head dim of the rope2d ops (rope_math.h) runs the runtime head-dim path.  Declared once: the
// kernel's switch (kernels/attention.cpp) and the Python list (core.attention_cpu_configs ->
// vl3fast.ops.attention.ATTENTION_FAST_HEAD_DIMS) both expand it.
#define VL3FAST_CPU_ATTN_FAST_HEAD_DIMS(X) X(64) X(72) X(80) X(128)
constexpr int kAttnVec = 16;  // floats per padded chunk (one 512-bit vector)
// Leading dim of the bf16 forward's query-lane tiles (kernels/attention_bf16.cpp): one chunk more than the 256
// queries, so that consecutive rows do not map to the same few L1 sets.
constexpr int kAttnBf16LdQ = kAttnFwdBlockQ + kAttnVec;
// 64-key blocks of the bf16 backward (kernels/attention_bf16_backward.cpp) that share each loaded query block.
constexpr int kAttnBf16BwdKeyBlocks = 2;

struct AttentionWorkspaceLayout {
  int64_t offsets = 0;     // int64 [S + 1]: work items before each segment
  int64_t cos_sin = 0;     // float [T, D]: cos of the D/2 pairs, then sin, per token
  int64_t delta = 0;       // float [H, T]: rowsum(dout * out) (backward only)
  int64_t dq_accum = 0;    // float [H, T, Dp]: dq in fp32 while it accumulates (fused backward only)
  int64_t packed_rows = 0;  // float [2, H, T, Dp]: rows of long segments (forward: K rotated, V; fused backward:
                            // Q rotated and scaled, dO), fp32 (see below)
  int64_t per_thread = 0;  // per-thread tiles start here
  int64_t thread_bytes = 0;
  int64_t total = 0;
};

VL3FAST_HD int64_t attn_align64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

// The backward runs fused, in one pass over (segment, head) work items (each item owns its dq, dk and dv
// rows: 5 tile products per 64 x 64 tile pair), when there are enough of those items to keep every thread
// busy; otherwise in two passes over 64-row blocks (7 products per tile pair, any number of threads).
VL3FAST_HD bool attn_backward_fused(int64_t num_segments, int num_heads, int num_threads) {
  return num_segments * num_heads >= 4 * static_cast<int64_t>(num_threads);
}
VL3FAST_HD int attn_padded_dim(int head_dim) { return (head_dim + kAttnVec - 1) / kAttnVec * kAttnVec; }

// The fp32-tile forward reads the K and V rows of a segment longer than kAttnPackKvMinLen tokens from
// packed_rows, filled once per call (K rotated), instead of loading and rotating each 64-key tile again for every
// 256 queries: per head, contiguous rows of Dp floats instead of rows a token stride (H * D values, another 4 KiB
// page per row at H = 16) apart.  The fused backward does the same with Q (rotated, scaled) and dO, which it
// reads again for every 64-key block.  Measured (fp32 forward, H = 16, D = 72, one core of an AMD EPYC Zen 4 with
// 1 MiB of L2, thread-CPU time; /tmp scripts, numbers in benchmarks/results/README.md): one 4096-token segment
// 64-66 -> 82-86 GFLOP/s, 4 x 2048 +10-15%, 5 x 1536 and 8 x 1024 -0.5% to +9% (noise), 16 x 512 -6%: a
// segment whose K and V rows of one head fit in L2 (2 x L x D x 4 bytes) keeps them there between its work
// items, and the packed rows cost a write and fresh pages (the workspace is new memory on every call).
// The rows of shorter segments are never written: those pages stay untouched.
constexpr int kAttnPackKvMinLen = 4 * kAttnFwdBlockQ;
//
// Floats of one thread's tiles.  Forward: Q^T and O^T (D x 256, sized Dp x 256), K and V (64 x Dp), S^T
// (64 x 256), m, l and the tile's column max (256), two padded rows.  Backward: 7 tiles of 64 x Dp (K^T, V^T,
// dK, dV, Q, dO / Q, dO, dQ, K^T, V^T, K / fused: K^T, V^T, K, dK, dV, Q, dO), 4 tiles of 64 x 64 (S, dP,
// P^T, dS^T), two padded rows.
VL3FAST_HD int64_t attn_thread_floats(int head_dim) {
  const int64_t dp = attn_padded_dim(head_dim);
  const int64_t fwd =
      (2 * kAttnFwdBlockQ + 2 * kAttnBlockK) * dp + kAttnFwdBlockQ * kAttnBlockK + 3 * kAttnFwdBlockQ + 2 * dp;
  const int64_t bwd = 7 * kAttnBlockQ * dp + 4 * kAttnBlockQ * kAttnBlockK + 2 * dp;
  // bf16 dot-product forward (kernels/attention_bf16.cpp): Q^T pair-packed (D/2 x 256 words), O^T (D x 256),
  // S^T (64 x 256) and P^T pair-packed (32 x 256 words), all with rows of kAttnBf16LdQ; K and V pair-packed
  // (2 x 32 x Dp words), m, l and the column max (256), two fp32 rows and one bf16 row.
  const int64_t fwd_bf16 = (dp / 2 + dp + kAttnBlockK + kAttnBlockK / 2) * kAttnBf16LdQ + kAttnBlockK * dp +
                           3 * kAttnFwdBlockQ + 2 * dp + dp / 2;
  // bf16 dot-product backward (kernels/attention_bf16_backward.cpp): per key block (kAttnBf16BwdKeyBlocks of
  // them) K^T and V^T head-dim pairs (2 x Dp/2 x 64 words), K key pairs (32 x Dp words), dK^T and dV^T
  // (2 x Dp x 64): 7/2 x Dp x 64; K rows (64 x Dp/2 words), Q and dO rows (2 x 64 x Dp/2 words) and query pairs
  // (2 x 32 x Dp words), S and dP (2 x 64 x 64), P and dS query pairs and dS rows (3 x 32 x 64 words), two rows.
  const int64_t bwd_bf16 = (7 * kAttnBf16BwdKeyBlocks + 1) * dp * kAttnBlockK / 2 + 2 * dp * kAttnBlockQ +
                           2 * kAttnBlockQ * kAttnBlockK + 3 * kAttnBlockQ / 2 * kAttnBlockK + 2 * dp;
  const int64_t most = fwd > bwd ? fwd : bwd;
  const int64_t most_bf16 = fwd_bf16 > bwd_bf16 ? fwd_bf16 : bwd_bf16;
  return most > most_bf16 ? most : most_bf16;
}

VL3FAST_HD AttentionWorkspaceLayout attention_workspace_layout(int64_t num_tokens, int64_t num_segments, int num_heads,
                                                              int head_dim, int num_threads, bool backward) {
  AttentionWorkspaceLayout w;
  int64_t at = 0;
  w.offsets = at;
  at += attn_align64((num_segments + 1) * 8);
  w.cos_sin = at;
  at += attn_align64(num_tokens * head_dim * 4);
  w.delta = at;
  if (backward) at += attn_align64(static_cast<int64_t>(num_heads) * num_tokens * 4);
  w.dq_accum = at;
  if (backward && attn_backward_fused(num_segments, num_heads, num_threads))
    at += attn_align64(static_cast<int64_t>(num_heads) * num_tokens * attn_padded_dim(head_dim) * 4);
  w.packed_rows = at;
  if (!backward || attn_backward_fused(num_segments, num_heads, num_threads))
    at += attn_align64(2 * static_cast<int64_t>(num_heads) * num_tokens * attn_padded_dim(head_dim) * 4);
  w.per_thread = at;
  w.thread_bytes = attn_align64(attn_thread_floats(head_dim) * 4);
  at += w.thread_bytes * num_threads;
  w.total = at + 64;  // slack so the base can be aligned up to 64 bytes
  return w;
}

}  // namespace vl3fast::cpu
