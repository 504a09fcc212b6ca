// 2D RoPE facts shared by the CPU and CUDA kernels, the bindings and (through _C.head_dim_range()) the
// Python checks: the supported head dims and the rotary angle of one channel pair.
#pragma once
#include <cstdint>

#include "vl3fast/host_device.h"

namespace vl3fast {

// Head dims every rope2d op supports: 2D RoPE splits D into row and column quarters, and the kernels keep
// per-token cos/sin of D/2 pairs in fixed-size buffers.  (The CUDA attention kernel supports a subset:
// VL3FAST_ATTN_TC_HEAD_DIMS in attention_tc.h.)
constexpr int kMinHeadDim = 4;
constexpr int kMaxHeadDim = 256;
constexpr int kHeadDimMultiple = 4;

VL3FAST_HD constexpr bool head_dim_supported(int64_t d) {
  return d >= kMinHeadDim && d <= kMaxHeadDim && d % kHeadDimMultiple == 0;
}

// The rotary angle of one channel pair, computed in fp32 as transformers does (float(position) *
// inv_freq), so the two agree to the last bit of the angle.
VL3FAST_HD float rope2d_angle(int pair, int quarter, int32_t row, int32_t col, const float* inv_freq) {
  return pair < quarter ? static_cast<float>(row) * inv_freq[pair]
                        : static_cast<float>(col) * inv_freq[pair - quarter];
}

}  // namespace vl3fast
