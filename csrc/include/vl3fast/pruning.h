// Index arithmetic and summation order of the Differential Frame Pruner (spec C), shared by the CPU
// and CUDA kernels (VL3FAST_HD), so the CPU tests exercise the arithmetic a GPU runs.
//
// Layout (packed_grid.h).  The m*m patches of one merged token are m*m consecutive pixel rows: a merged
// token is one contiguous run of K = m*m*row_width values.  The keep mask and the encoder's merged
// features follow the merged-token order (item -> frame -> block).
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
#include "vl3fast/packed_grid.h"

namespace vl3fast {

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
