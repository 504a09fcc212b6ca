// Kernel parameter structs: plain data (pointers, sizes, strides in elements), the whole interface
// between the bindings and the CPU/CUDA kernels.  Built by csrc/bindings.cpp from TensorRefs.
#pragma once
#include <cstdint>

#include "vl3fast/dtype.h"

namespace vl3fast {

// pos_hw and cu_seqlens for a packed visual batch (see positions.h for the ordering).
struct PositionIdsParams {
  const int64_t* item_table = nullptr;  // [num_items, kItemFields]
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

}  // namespace vl3fast
