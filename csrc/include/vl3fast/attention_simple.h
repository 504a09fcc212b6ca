// The simple CUDA rope2d attention (csrc/cuda/attention_simple.cu): tile sizes, shared memory and workspace.
//
// It serves what the tensor-core kernel (attention_tc.h) does not: float32 inputs, and every head dim the
// CPU kernel accepts (multiples of 4 up to 256) that the tensor-core list lacks; and it is the on-GPU
// cross-check of the tensor-core kernel (benchmarks/gpu/smoke.py compares the two with the CPU kernel).
// So it is written for obviousness, not speed: one CTA per (16-query tile, head) in the forward and in
// the dQ pass, one per (16-key tile, head) in the dK/dV pass (two passes, no atomics, deterministic),
// all arithmetic in fp32 from shared-memory tiles, the head dim a runtime value.
// RoPE exactly as the CPU kernel (csrc/cpu/kernels/attention.cpp): fp32 angles row/col * inv_freq, fp32
// cos/sin per (token, pair) in a table, q and k rotated in fp32 and never rounded to the input dtype,
// q scaled by the softmax scale after rotation; dq and dk rotated back by the inverse rotation.
// The work decomposition is the tensor-core kernel's: the same block-table scan (with its device-side
// input checks and status word) and the same grid-stride loop over work items.
#pragma once
#include <cstdint>

#include "vl3fast/attention_tc.h"
#include "vl3fast/host_device.h"
#include "vl3fast/rope_math.h"

namespace vl3fast::attn_simple {

constexpr int kThreads = 128;
constexpr int kBlock = 16;         // queries per forward / dQ CTA tile; keys per key tile and per dK/dV CTA
// Accumulator elements per thread (registers) at the largest head dim every rope2d op takes (rope_math.h).
constexpr int kOwned = kBlock * ::vl3fast::kMaxHeadDim / kThreads;

// Shared memory (bytes) for head dim D: three fp32 [16 x D] tiles (q, k, v; the backward's dO takes the
// forward's q slot plus one more) and the 16 x 16 score tile(s) with per-row statistics.
VL3FAST_HD int fwd_smem_bytes(int head_dim) { return 4 * (3 * kBlock * head_dim + kBlock * kBlock + 3 * kBlock); }
VL3FAST_HD int bwd_smem_bytes(int head_dim) { return 4 * (4 * kBlock * head_dim + 2 * kBlock * kBlock + 2 * kBlock); }

// attn_tc::WorkspaceHead (status, block table of 16-row work items, cos/sin table), then:
struct Workspace : attn_tc::WorkspaceHead {
  int64_t delta = 0;        // backward: float [H, T], rowsum(dout * out)
  int64_t total = 0;
};

VL3FAST_HD Workspace workspace_layout(int64_t num_tokens, int64_t num_segments, int num_heads, int head_dim,
                                      bool backward) {
  using attn_tc::align256;
  Workspace w;
  static_cast<attn_tc::WorkspaceHead&>(w) = attn_tc::workspace_head(num_tokens, num_segments, head_dim);
  int64_t at = w.head_end;
  if (backward) {
    w.delta = at;
    at += align256(num_tokens * num_heads * 4);
  }
  w.total = at;
  return w;
}

}  // namespace vl3fast::attn_simple
