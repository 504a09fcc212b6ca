// 2D RoPE on [T, H, D] (compiled once per ISA level; see isa.h).
// cos/sin are computed once per token and shared by all heads; the per-head loop is a plain
// contiguous loop over D/2 channel pairs that the compiler vectorizes for the target ISA.
#include <cmath>

#include "../isa.h"
#include "../scalar_types.h"
#include "vl3fast/rope_math.h"

namespace vl3fast::cpu::VL3FAST_ISA_NS {
namespace {

template <typename T>
void rope2d_typed(const Rope2dParams& p) {
  const int half = p.head_dim / 2;
  const int quarter = p.head_dim / 4;
  const float sign = p.inverse ? -1.0f : 1.0f;
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
#pragma omp parallel
  {
    float cos_v[kMaxHeadDim / 2], sin_v[kMaxHeadDim / 2];  // no std::vector (scalar_types.h); D checked by the bindings
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.num_tokens; ++t) {
      const int32_t row = p.pos_hw[2 * t], col = p.pos_hw[2 * t + 1];
      for (int j = 0; j < half; ++j) {
        const float a = rope2d_angle(j, quarter, row, col, p.inv_freq);
        cos_v[j] = std::cos(a);
        sin_v[j] = sign * std::sin(a);
      }
      for (int h = 0; h < p.num_heads; ++h) {
        const T* xi = x + t * p.x_stride_token + h * p.x_stride_head;
        T* oi = out + t * p.out_stride_token + h * p.out_stride_head;
        // Read both halves before writing: out may alias x.
#pragma omp simd
        for (int j = 0; j < half; ++j) {
          const float a = to_float(xi[j]), b = to_float(xi[j + half]);
          const float c = cos_v[j], s = sin_v[j];
          oi[j] = from_float<T>(a * c - b * s);
          oi[j + half] = from_float<T>(b * c + a * s);
        }
      }
    }
  }
}

}  // namespace

void apply_rope2d(const Rope2dParams& p) {
  VL3FAST_DISPATCH_FLOATING(p.dtype, float, bf16, f16, "apply_rope2d", [&] { rope2d_typed<scalar_t>(p); });
}

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS
