// Kernel parameter structs: plain data (pointers, sizes, strides in elements), the whole interface
// between the bindings and the CPU/CUDA kernels.  Built by csrc/bindings/*.cpp from TensorRefs.
#pragma once
#include <cstdint>

#include "vl3fast/dtype.h"

namespace vl3fast {

// pos_hw and cu_seqlens for a packed visual batch (see packed_grid.h for the ordering).
struct PositionIdsParams {
  const int64_t* item_table = nullptr;  // [num_items, kGridFields] (packed_grid.h)
  int64_t num_items = 0;
  int64_t num_tokens = 0;   // T = sum t*h*w
  int64_t num_frames = 0;   // S = sum t
  int32_t* pos_hw = nullptr;      // [T, 2] out
  int32_t* cu_seqlens = nullptr;  // [S + 1] out
};

// out = R(angle(pos_hw)) x, per head; `inverse` rotates by -angle (the backward pass).
// Pair j of D/2 uses channels (j, j + D/2); j < D/4 rotates by row * inv_freq[j], otherwise by
// col * inv_freq[j - D/4] (VideoLLaMA3 spec A: rotary dim D/2, rotate_half over the full D).
struct Rope2dParams {
  const void* x = nullptr;  // [T, H, D], last dim contiguous
  void* out = nullptr;      // [T, H, D], last dim contiguous (may alias x)
  int64_t x_stride_token = 0, x_stride_head = 0;
  int64_t out_stride_token = 0, out_stride_head = 0;
  const int32_t* pos_hw = nullptr;  // [T, 2] contiguous
  const float* inv_freq = nullptr;  // [D / 4] float32
  int64_t num_tokens = 0;
  int32_t num_heads = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kFloat32;
  bool inverse = false;
};

// Differential Frame Pruner keep mask (spec C; layout and summation order in pruning.h).
// keep[i] for every merged token i: frame 0 of a video and every token of a single-frame item are
// kept; otherwise keep = 255 * mean|P_t - P_{t-1}| > threshold (float32, torch's summation order),
// then a frame with fewer than min_tokens kept tokens keeps its first min_tokens.
struct FrameKeepParams {
  const void* pixels = nullptr;  // [P, row_width], rows `row_stride` elements apart, last dim contiguous
  DType dtype = DType::kFloat32;
  int64_t row_stride = 0;
  int64_t row_width = 0;
  const int64_t* item_table = nullptr;  // [num_items, kGridFields] (packed_grid.h)
  int64_t num_items = 0;
  int64_t num_tokens = 0;  // M merged tokens
  int64_t num_frames = 0;  // F frames (images count as one)
  double threshold = 0.1;  // compared as float32, as torch compares a float32 tensor with a Python float
  int64_t min_tokens = 1;
  int32_t sum_lanes = 8;   // V of the torch summation order reproduced (8, or 1 = scalar; pruning.h)
  int64_t max_frame_tokens = 0;  // largest (h/m)*(w/m) over the items (CUDA grid size)
  bool* keep = nullptr;    // [M] out
  float* diff = nullptr;   // [M] out, optional: d per token; threshold + 1 where the token is kept by rule
};

// Compaction of a keep mask: kept merged tokens and their m*m patch rows, in order, with new
// per-frame segment bounds.  Fixed-size outputs (no host sync): entries past the kept count are -1.
struct KeepCompactParams {
  const bool* keep = nullptr;           // [M]
  const int64_t* item_table = nullptr;  // [num_items, kGridFields] (packed_grid.h)
  int64_t num_items = 0;
  int64_t num_tokens = 0;   // M
  int64_t num_patches = 0;  // P
  int64_t num_frames = 0;   // F
  int64_t* token_index = nullptr;   // [M] out: kept merged-token indices, then -1
  int32_t* token_cu = nullptr;      // [F + 1] out: kept merged tokens per frame, cumulative
  int64_t* patch_index = nullptr;   // [P] out: kept pixel rows, then -1
  int32_t* patch_pos_hw = nullptr;  // [P, 2] out: original (row, col) of each kept pixel row, then -1
  int32_t* patch_cu = nullptr;      // [F + 1] out: kept patches per frame, cumulative (cu_seqlens)
  int64_t* num_kept = nullptr;      // [2] out: (kept merged tokens, kept patches)
  void* workspace = nullptr;        // CUDA only: keep_compaction_workspace_bytes(M) bytes
  uint64_t workspace_bytes = 0;
};

}  // namespace vl3fast

namespace vl3fast {

// Packed non-causal attention inside cu_seqlens segments, with VideoLLaMA3's 2D RoPE applied to q and k
// inside the kernel (see Rope2dParams for the rotation).  q/k/v/out/dout/dq/dk/dv are [T, H, D] with
// the last dim contiguous and arbitrary token/head strides (views of a fused qkv projection work).
// lse is the log-sum-exp of the scaled logits, float32 [H, T] contiguous.  `workspace` is caller-owned
// scratch of `workspace_bytes` bytes (size: rope2d_attention_workspace_bytes, from cpu/attention_tiles.h on
// the CPU and vl3fast/attention_tc.h on CUDA); kernels never allocate.
struct AttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t q_stride_token = 0, q_stride_head = 0;
  int64_t k_stride_token = 0, k_stride_head = 0;
  int64_t v_stride_token = 0, v_stride_head = 0;
  void* out = nullptr;  // forward output; backward input (for rowsum(dout * out))
  int64_t out_stride_token = 0, out_stride_head = 0;
  float* lse = nullptr;  // [H, T]: written by forward, read by backward
  // Backward only.
  const void* dout = nullptr;
  int64_t dout_stride_token = 0, dout_stride_head = 0;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  int64_t dq_stride_token = 0, dq_stride_head = 0;
  int64_t dk_stride_token = 0, dk_stride_head = 0;
  int64_t dv_stride_token = 0, dv_stride_head = 0;

  const int32_t* cu_seqlens = nullptr;  // [S + 1], validated: 0 first, non-decreasing, last == T
  const int32_t* pos_hw = nullptr;      // [T, 2] contiguous
  const float* inv_freq = nullptr;      // [D / 4] float32
  int64_t num_tokens = 0;
  int64_t num_segments = 0;
  int32_t num_heads = 0;
  int32_t head_dim = 0;
  float scale = 1.0f;
  DType dtype = DType::kFloat32;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
  int32_t num_threads = 1;  // worker threads the workspace was sized for
};

}  // namespace vl3fast
