// Storage types for reduced-precision floats on the CPU, with conversions to and from float.
// Included only by csrc/cpu/kernels/ (compiled once per ISA): everything here lives in the ISA's own
// namespace, because an inline function shared by differently-flagged translation units would be
// merged by the linker and an AVX-512 copy could end up running on a CPU without AVX-512.
// bf16 conversion rounds to nearest even, like torch; fp16 uses the compiler's _Float16, which
// becomes F16C/AVX-512 conversions in the ISA builds that have them.
#pragma once
#include <cstdint>
#include <cstring>

namespace vl3fast::cpu::VL3FAST_ISA_NS {

struct bf16 {
  uint16_t bits;
};
using f16 = _Float16;

inline float to_float(float v) { return v; }
inline float to_float(f16 v) { return static_cast<float>(v); }
inline float to_float(bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) { return v; }
template <>
inline f16 from_float<f16>(float v) { return static_cast<f16>(v); }
template <>
inline bf16 from_float<bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS
