// Host entry points of the CUDA rope2d attention and its small helper kernels (no host sync anywhere):
//   block_table_kernel  cu_seqlens -> block_start[S + 1] (one CTA scan; the main kernels binary-search it)
//   rope_prep_kernel    cos/sin table [T, D/2] (fp32 angles) + rotated k (and q for the backward) in the
//                       kernel layout [H, T, D_qk] with zero pad channels
//   delta_kernel        rowsum(dout * out) per (head, token), fp32 (backward)
//   dq_finalize_kernel  dq = scale * R^T dq_accum, in the input dtype (backward)
// The main kernels are in attention_fwd.cu and attention_bwd.cu.  Compiles, unverified on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention_common.cuh"
#include "check.cuh"
#include "launchers.h"
#include "mma.cuh"
#include "vl3fast/rope_math.h"

namespace vl3fast::cuda {
namespace {

using namespace attn_tc;
using tc::from_float;
using tc::to_float;

__global__ void __launch_bounds__(kScanThreads) block_table_kernel(const int32_t* cu_seqlens, int64_t num_segments,
                                                                    int64_t num_tokens, int block,
                                                                    int32_t* block_start) {
  __shared__ int32_t warp_totals[kScanThreads / 32];
  __shared__ int32_t carry;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid == 0) {
    carry = 0;
    block_start[0] = 0;
  }
  __syncthreads();
  for (int64_t base = 0; base < num_segments; base += kScanThreads) {
    const int64_t s = base + tid;
    int32_t v = s < num_segments ? static_cast<int32_t>(segment_blocks(cu_seqlens, s, num_tokens, block)) : 0;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const int32_t n = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += n;
    }
    if (lane == 31) warp_totals[warp] = v;
    __syncthreads();
    if (warp == 0) {
      int32_t w = warp_totals[lane];
#pragma unroll
      for (int o = 1; o < 32; o *= 2) {
        const int32_t n = __shfl_up_sync(0xffffffffu, w, o);
        if (lane >= o) w += n;
      }
      warp_totals[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    const int32_t incl = carry + v + (warp > 0 ? warp_totals[warp - 1] : 0);
    if (s < num_segments) block_start[s + 1] = incl;
    __syncthreads();
    if (tid == kScanThreads - 1) carry = incl;
    __syncthreads();
  }
}

template <typename T, int D>
__global__ void rope_prep_kernel(const AttnDevArgs a, bool with_q) {
  constexpr int DQ = qk_dim(D), HALF = D / 2, PAIRS = DQ / 2;
  const AttentionParams& p = a.p;
  const int64_t total = p.num_tokens * PAIRS;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int64_t t = i / PAIRS;
    const int j = static_cast<int>(i % PAIRS);
    float s = 0.f, c = 0.f;
    if (j < HALF) {
      sincosf(rope2d_angle(j, D / 4, p.pos_hw[2 * t], p.pos_hw[2 * t + 1], p.inv_freq), &s, &c);
      a.cos_sin[t * HALF + j] = make_float2(c, s);
    }
    for (int pass = 0; pass < (with_q ? 2 : 1); ++pass) {
      const T* src = static_cast<const T*>(pass ? p.q : p.k);
      const int64_t st = pass ? p.q_stride_token : p.k_stride_token;
      const int64_t sh = pass ? p.q_stride_head : p.k_stride_head;
      T* dst = static_cast<T*>(pass ? a.q_rot : a.k_rot);
      for (int h = 0; h < p.num_heads; ++h) {
        T* d = dst + (h * p.num_tokens + t) * DQ;
        if (j < HALF) {
          const T* x = src + t * st + h * sh;
          const float x0 = to_float(x[j]), x1 = to_float(x[j + HALF]);
          d[j] = from_float<T>(x0 * c - x1 * s);
          d[j + HALF] = from_float<T>(x1 * c + x0 * s);
        } else {
          d[D + 2 * (j - HALF)] = from_float<T>(0.f);
          d[D + 2 * (j - HALF) + 1] = from_float<T>(0.f);
        }
      }
    }
  }
}

// One warp per (token, head).
template <typename T, int D>
__global__ void delta_kernel(const AttnDevArgs a) {
  const AttentionParams& p = a.p;
  const int64_t warps = p.num_tokens * p.num_heads;
  const int lane = threadIdx.x % 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t w = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; w < warps; w += stride) {
    const int64_t t = w / p.num_heads;
    const int h = static_cast<int>(w % p.num_heads);
    const T* o = static_cast<const T*>(p.out) + t * p.out_stride_token + h * p.out_stride_head;
    const T* g = static_cast<const T*>(p.dout) + t * p.dout_stride_token + h * p.dout_stride_head;
    float sum = 0.f;
    for (int d = lane; d < D; d += 32) sum += to_float(o[d]) * to_float(g[d]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) a.delta[h * p.num_tokens + t] = sum;
  }
}

template <typename T, int D>
__global__ void dq_finalize_kernel(const AttnDevArgs a) {
  constexpr int HALF = D / 2;
  const AttentionParams& p = a.p;
  const int64_t total = p.num_tokens * p.num_heads * HALF;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int j = static_cast<int>(i % HALF);
    const int64_t th = i / HALF;
    const int h = static_cast<int>(th % p.num_heads);
    const int64_t t = th / p.num_heads;
    const float* acc = a.dq_accum + (h * p.num_tokens + t) * D;
    const float x = acc[j] * p.scale, y = acc[j + HALF] * p.scale;
    const float2 cs = a.cos_sin[t * HALF + j];
    T* out = static_cast<T*>(p.dq) + t * p.dq_stride_token + h * p.dq_stride_head;
    out[j] = from_float<T>(x * cs.x + y * cs.y);
    out[j + HALF] = from_float<T>(y * cs.x - x * cs.y);
  }
}

AttnDevArgs dev_args(const AttentionParams& p, bool backward) {
  const Workspace w = workspace_layout(p.num_tokens, p.num_segments, p.num_heads, p.head_dim, backward);
  if (p.workspace_bytes < w.total)
    throw std::invalid_argument("rope2d_attention: CUDA workspace too small (" + std::to_string(p.workspace_bytes) +
                                " < " + std::to_string(w.total) + " bytes)");
  auto* base = static_cast<unsigned char*>(p.workspace);
  AttnDevArgs a;
  a.p = p;
  a.block_start = reinterpret_cast<const int32_t*>(base + w.block_start);
  a.cos_sin = reinterpret_cast<float2*>(base + w.cos_sin);
  a.k_rot = base + w.k_rot;
  if (backward) {
    a.q_rot = base + w.q_rot;
    a.delta = reinterpret_cast<float*>(base + w.delta);
    a.dq_accum = reinterpret_cast<float*>(base + w.dq_accum);
  }
  return a;
}

// The pre-passes shared by forward and backward: block table and the RoPE table + rotated operands.
void prepare(const AttnDevArgs& a, int block, bool with_q, cudaStream_t s) {
  const AttentionParams& p = a.p;
  block_table_kernel<<<1, kScanThreads, 0, s>>>(p.cu_seqlens, p.num_segments, p.num_tokens, block,
                                                const_cast<int32_t*>(a.block_start));
  check_cuda(cudaGetLastError(), "rope2d_attention block table launch");
  attn_tc_dispatch(p.dtype, p.head_dim, "rope2d_attention", [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int D = decltype(dim)::value;
    rope_prep_kernel<T, D><<<grid_for(p.num_tokens * (qk_dim(D) / 2), 256), 256, 0, s>>>(a, with_q);
  });
  check_cuda(cudaGetLastError(), "rope2d_attention rope pre-pass launch");
}

}  // namespace

void rope2d_attention_forward(const AttentionParams& p, int64_t max_seqlen, int device, uintptr_t stream) {
  DeviceGuard guard(device);
  auto* s = reinterpret_cast<cudaStream_t>(stream);
  const AttnDevArgs a = dev_args(p, false);
  prepare(a, kBlockM, false, s);
  const int64_t grid_x = work_items_upper_bound(p.num_tokens, p.num_segments, kBlockM, max_seqlen);
  if (grid_x > 0) attention_fwd_main(a, grid_x, s);
}

void rope2d_attention_backward(const AttentionParams& p, int64_t max_seqlen, int device, uintptr_t stream) {
  DeviceGuard guard(device);
  auto* s = reinterpret_cast<cudaStream_t>(stream);
  const AttnDevArgs a = dev_args(p, true);
  const Workspace w = workspace_layout(p.num_tokens, p.num_segments, p.num_heads, p.head_dim, true);
  check_cuda(cudaMemsetAsync(a.dq_accum, 0, w.total - w.dq_accum, s), "rope2d_attention dq workspace clear");
  prepare(a, kBlockN, true, s);
  attn_tc_dispatch(p.dtype, p.head_dim, "rope2d_attention_backward", [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int D = decltype(dim)::value;
    delta_kernel<T, D><<<grid_for(p.num_tokens * p.num_heads * 32, 256), 256, 0, s>>>(a);
  });
  check_cuda(cudaGetLastError(), "rope2d_attention delta launch");
  const int64_t grid_x = work_items_upper_bound(p.num_tokens, p.num_segments, kBlockN, max_seqlen);
  if (grid_x > 0) attention_bwd_main(a, grid_x, s);
  attn_tc_dispatch(p.dtype, p.head_dim, "rope2d_attention_backward", [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int D = decltype(dim)::value;
    dq_finalize_kernel<T, D><<<grid_for(p.num_tokens * p.num_heads * (D / 2), 256), 256, 0, s>>>(a);
  });
  check_cuda(cudaGetLastError(), "rope2d_attention dq finalize launch");
}

}  // namespace vl3fast::cuda
