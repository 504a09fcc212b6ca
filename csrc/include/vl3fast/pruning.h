// Index arithmetic and summation order of the Differential Frame Pruner (spec C), shared by the CPU
// and CUDA kernels (VL3FAST_HD), so the CPU tests exercise the arithmetic a GPU runs.
//
// Layout.  pixel_values rows are item -> frame -> merged block -> in-block patch (spec A), so the
// m*m patches of one merged token are m*m consecutive rows: a merged token is one contiguous run of
// K = m*m*row_width values.  Merged tokens are numbered the same way (item -> frame -> block),
// which is the order of the keep mask and of the encoder's merged features.
//
// Summation order.  transformers computes d = |P_t - P_{t-1}|.mean(-1) * 255 with torch's CPU
// float32 sum, whose rounding depends on its order: at::native's cascade_sum over a contiguous row
// (aten/src/ATen/native/cpu/SumKernel.cpp, vectorized_inner_sum -> row_sum -> multi_row_sum) with
// V = 8 float lanes (torch's sum kernel has no AVX-512 registration, so its AVX512, AVX2 and DEFAULT
// capabilities all run 32-byte vectors: measured, tests/ops/test_pruning.py) and V = 1 when K < V
// (the scalar path).  The kernels reproduce that order exactly (described in TorchSumOrder below), so
// the float32 d, and hence every keep decision, is bit-identical to torch's on fp32 input, also for
// differences within an ulp of the threshold.  Lane l of stream k of "ilp row" i reads element
// (4*i + k)*V + l.
#pragma once
#include <cstdint>

#include "vl3fast/host_device.h"
#include "vl3fast/table_search.h"

namespace vl3fast {

// One row of the item table built by vl3fast/ops/pruning.py.
enum PruneField : int {
  kPrT = 0, kPrH = 1, kPrW = 2, kPrMerge = 3,
  kPrPatchOffset = 4,  // first pixel row of the item
  kPrFrameOffset = 5,  // first frame (attention segment) of the item
  kPrTokenOffset = 6,  // first merged token of the item
  kPruneFields = 7
};

// Item of a packed merged token or frame (see table_search.h).
VL3FAST_HD int64_t prune_item_of(const int64_t* table, int64_t n, int field, int64_t value) {
  return last_row_at_most(table, n, kPruneFields, field, value);
}

VL3FAST_HD int64_t tokens_per_frame(const int64_t* row) {
  return (row[kPrH] / row[kPrMerge]) * (row[kPrW] / row[kPrMerge]);
}

// The merged tokens [begin, end) of global frame `frame` (images count as one frame).
struct FrameSpan {
  int64_t item;
  int64_t begin;        // first merged token
  int64_t end;          // one past the last merged token
  int64_t patch_begin;  // first pixel row
  int64_t merge;        // m
  int64_t frame_in_item;
};

VL3FAST_HD FrameSpan frame_span(const int64_t* table, int64_t num_items, int64_t frame) {
  FrameSpan s;
  s.item = prune_item_of(table, num_items, kPrFrameOffset, frame);
  const int64_t* row = table + s.item * kPruneFields;
  const int64_t n = tokens_per_frame(row);
  s.frame_in_item = frame - row[kPrFrameOffset];
  s.begin = row[kPrTokenOffset] + s.frame_in_item * n;
  s.end = s.begin + n;
  s.merge = row[kPrMerge];
  s.patch_begin = row[kPrPatchOffset] + s.frame_in_item * row[kPrH] * row[kPrW];
  return s;
}

// First pixel row of merged token `token` of item row `row` (token counted from the item start).
VL3FAST_HD int64_t token_first_patch(const int64_t* row, int64_t token_in_item) {
  return row[kPrPatchOffset] + token_in_item * row[kPrMerge] * row[kPrMerge];
}

// (row, col) of in-block patch r of merged token `j` (index inside its frame): the original
// RoPE position of that patch (same as vl3fast/positions.h patch_position(j*m*m + r, w, m)).
VL3FAST_HD void kept_patch_position(int64_t j, int64_t r, int64_t w, int64_t m, int32_t* pos) {
  const int64_t blocks_per_row = w / m;
  const int64_t block_row = j / blocks_per_row;
  const int64_t block_col = j - block_row * blocks_per_row;
  pos[0] = static_cast<int32_t>(block_row * m + r / m);
  pos[1] = static_cast<int32_t>(block_col * m + r % m);
}

// torch's CeilLog2 (aten/src/ATen/native/cpu/utils.h): 1 for x <= 2, else bit width of x - 1.
VL3FAST_HD int64_t torch_ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  int64_t bits = 0;
  for (uint64_t v = static_cast<uint64_t>(x - 1); v != 0; v >>= 1) ++bits;
  return bits;
}

// The shape of torch's cascade sum of a contiguous float32 row of K values with V lanes:
//  * nvec = K / V whole vectors; the K % V tail is summed separately, scalar, in order;
//  * the vectors form nilp = nvec / 4 "ilp rows" of 4 streams; each stream (k, lane) accumulates its
//    ilp rows into a 4-level cascade: level 0 takes `step` = 2^level_power rows, then is added into
//    level 1 (and level 0 reset); level j carries into j+1 only when i is a multiple of
//    step^(j+1) (torch's `if ((i & mask) != 0) break`).  Rows after the last whole step go into
//    level 0; finally level 0 += level 1, += level 2, += level 3;
//  * vectors 4*nilp .. nvec-1 are added into stream 0; then stream0 += stream1, += 2, += 3 per lane;
//  * result = ((tail sum) + lane 0) + lane 1 + ... + lane V-1.
struct TorchSumOrder {
  int64_t lanes;  // V
  int64_t nvec;
  int64_t nilp;
  int64_t level_power;
  int64_t step;
};

VL3FAST_HD TorchSumOrder torch_sum_order(int64_t K, int64_t lanes) {
  TorchSumOrder o;
  o.lanes = K >= lanes ? lanes : 1;  // torch takes the scalar path (V = 1) for rows shorter than a vector
  o.nvec = K / o.lanes;
  o.nilp = o.nvec / 4;
  const int64_t lp = torch_ceil_log2(o.nilp) / 4;
  o.level_power = lp > 4 ? lp : 4;
  o.step = int64_t(1) << o.level_power;
  return o;
}

// After finishing a whole `step` of ilp rows ending at row i (exclusive), the cascade levels
// 1..3 that receive a carry: level j+1 receives one only if i is a multiple of step^(j+1).
// Returns the highest level that receives a carry (1, 2 or 3).
VL3FAST_HD int cascade_top_level(int64_t i, int64_t level_power) {
  const int64_t mask = (int64_t(1) << level_power) - 1;
  int top = 1;
  for (int j = 1; j < 3; ++j) {
    if ((i & (mask << (j * level_power))) != 0) break;
    top = j + 1;
  }
  return top;
}

}  // namespace vl3fast
