// Packed 2D-RoPE attention entry points: the head-dim fast paths and the dtype x ISA choice of kernel.
// The kernel is csrc/cpu/attention_kernel.h (fp32 tiles, any dtype); bf16 runs the bf16 dot-product kernels
// (kernels/attention_bf16.cpp forward, kernels/attention_bf16_backward.cpp backward) in ISA builds that have
// AVX512-BF16.
#include <type_traits>

#include "../attention_kernel.h"

namespace vl3fast::cpu::VL3FAST_ISA_NS {
namespace {

template <typename T, int kD>
void run_kernel(const AttentionParams& p, bool backward) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, bf16>) {
    return backward ? backward_bf16_dot<kD>(p) : forward_bf16_dot<kD>(p);
  }
#endif
  const Attention<T, kD> kernel(p, backward);
  backward ? kernel.backward() : kernel.forward();
}

template <typename T>
void run_attention(const AttentionParams& p, bool backward) {
  // Fast paths: the head dims of VL3FAST_CPU_ATTN_FAST_HEAD_DIMS (attention_tiles.h); any other multiple
  // of 4 up to 256 takes the runtime-D path.
#define VL3FAST_FAST_HEAD_DIM_CASE(D) \
  case D:                             \
    return run_kernel<T, D>(p, backward);
  switch (p.head_dim) {
    VL3FAST_CPU_ATTN_FAST_HEAD_DIMS(VL3FAST_FAST_HEAD_DIM_CASE)
    default: return run_kernel<T, 0>(p, backward);
  }
#undef VL3FAST_FAST_HEAD_DIM_CASE
}

}  // namespace

void rope2d_attention_forward(const AttentionParams& p) {
  VL3FAST_DISPATCH_FLOATING(p.dtype, float, bf16, f16, "rope2d_attention_forward",
                            [&] { run_attention<scalar_t>(p, false); });
}

void rope2d_attention_backward(const AttentionParams& p) {
  VL3FAST_DISPATCH_FLOATING(p.dtype, float, bf16, f16, "rope2d_attention_backward",
                            [&] { run_attention<scalar_t>(p, true); });
}

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS
