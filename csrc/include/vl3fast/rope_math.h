// The 2D rotary angle of one channel pair, shared by CPU and CUDA kernels.  Computed in fp32 as
// transformers does (float(position) * inv_freq), so the two agree to the last bit of the angle.
#pragma once
#include <cstdint>

#include "vl3fast/host_device.h"

namespace vl3fast {

VL3FAST_HD float rope2d_angle(int pair, int quarter, int32_t row, int32_t col, const float* inv_freq) {
  return pair < quarter ? static_cast<float>(row) * inv_freq[pair]
                        : static_cast<float>(col) * inv_freq[pair - quarter];
}

}  // namespace vl3fast
