// 2D RoPE on [T, H, D]: one thread per (token, head, channel pair).  Angles in fp32 with the shared
// helper (vl3fast/rope_math.h); sincosf for accuracy at large positions (no fast-math intrinsics).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "check.cuh"
#include "convert.cuh"
#include "launchers.h"
#include "vl3fast/rope_math.h"

namespace vl3fast::cuda {
namespace {

template <typename T>
__global__ void rope2d_kernel(Rope2dParams p) {
  const int half = p.head_dim / 2;
  const int quarter = p.head_dim / 4;
  const int64_t total = p.num_tokens * p.num_heads * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const T* x = static_cast<const T*>(p.x);
  T* out = static_cast<T*>(p.out);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int j = static_cast<int>(i % half);
    const int64_t th = i / half;
    const int h = static_cast<int>(th % p.num_heads);
    const int64_t t = th / p.num_heads;
    float s, c;
    sincosf(rope2d_angle(j, quarter, p.pos_hw[2 * t], p.pos_hw[2 * t + 1], p.inv_freq), &s, &c);
    if (p.inverse) s = -s;
    const T* xi = x + t * p.x_stride_token + h * p.x_stride_head;
    T* oi = out + t * p.out_stride_token + h * p.out_stride_head;
    const float a = to_float(xi[j]), b = to_float(xi[j + half]);
    oi[j] = from_float<T>(a * c - b * s);
    oi[j + half] = from_float<T>(b * c + a * s);
  }
}

}  // namespace

void apply_rope2d(const Rope2dParams& p, int device, uintptr_t stream) {
  DeviceGuard guard(device);
  constexpr int kThreads = 256;
  const unsigned blocks = grid_for(p.num_tokens * p.num_heads * (p.head_dim / 2), kThreads);
  auto* s = reinterpret_cast<cudaStream_t>(stream);
  VL3FAST_DISPATCH_FLOATING(p.dtype, float, __nv_bfloat16, __half, "apply_rope2d", [&] {
    rope2d_kernel<scalar_t><<<blocks, kThreads, 0, s>>>(p);
  });
  check_launch(std::string("rope2d_kernel<") + dtype_name(p.dtype) + ">", s);
}

}  // namespace vl3fast::cuda
