// Host entry points of the CUDA rope2d attention and its small helper kernels (no host sync anywhere):
//   block_table_kernel  cu_seqlens -> block_start[S + 1] (one CTA scan; the main kernels binary-search it)
//   rope_prep_kernel    cos/sin table [T, D/2] (fp32 angles) + rotated k (and q for the backward) in the
//                       kernel layout [H, T, D_qk] with zero pad channels
//   delta_kernel        rowsum(dout * out) per (head, token), fp32 (backward)
//   dq_finalize_kernel  dq = scale * R^T dq_accum, in the input dtype (backward)
//   rope_table_kernel   the cos/sin table alone (the simple kernel, attention_simple.cu)
// Every call starts with begin_call(): the checked-mode NaN fill (VL3FAST_CUDA_DEBUG, check.cuh) and the
// block table, whose scan also checks cu_seqlens and the max_seqlen hint on the device (status word).
// The main kernels are in attention_fwd.cu, attention_bwd.cu and attention_simple.cu.
// Compiles, unverified on a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention_common.cuh"
#include "check.cuh"
#include "launchers.h"
#include "mma.cuh"
#include "vl3fast/attention_simple.h"
#include "vl3fast/rope_math.h"

namespace vl3fast::cuda {
namespace {

using namespace attn_tc;
using tc::from_float;
using tc::to_float;

__global__ void __launch_bounds__(kScanThreads) block_table_kernel(const int32_t* cu_seqlens, int64_t num_segments,
                                                                    int64_t num_tokens, int block, int64_t max_seqlen,
                                                                    int32_t* block_start, int32_t* status) {
  __shared__ int32_t warp_totals[kScanThreads / 32];
  __shared__ int32_t carry;
  __shared__ int32_t flags;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid == 0) {
    carry = 0;
    flags = num_segments > 0 ? 0 : no_segment_status(cu_seqlens, num_tokens);
    block_start[0] = 0;
  }
  __syncthreads();
  for (int64_t base = 0; base < num_segments; base += kScanThreads) {
    const int64_t s = base + tid;
    int32_t v = 0;
    if (s < num_segments) {
      v = static_cast<int32_t>(segment_blocks(cu_seqlens, s, num_tokens, block));
      const int32_t st = segment_status(cu_seqlens, s, num_segments, num_tokens, max_seqlen);
      if (st) atomicOr(&flags, st);
    }
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
  // A malformed cu_seqlens: no work items; the main kernels write NaN instead (attention_common.cuh).
  if (tid == 0) {
    *status = flags;
    if (flags & kStatusBadCuSeqlens) block_start[num_segments] = 0;
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

// One warp per (token, head); the head dim is a runtime value (shared by both kernels).
template <typename T>
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
    for (int d = lane; d < p.head_dim; d += 32) sum += to_float(o[d]) * to_float(g[d]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) a.delta[h * p.num_tokens + t] = sum;
  }
}

// cos/sin of every token's D/2 pair angles (the simple kernel's table; the tensor-core pre-pass fuses it).
__global__ void rope_table_kernel(const AttnDevArgs a) {
  const AttentionParams& p = a.p;
  const int half = p.head_dim / 2;
  const int64_t total = p.num_tokens * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int64_t t = i / half;
    const int j = static_cast<int>(i % half);
    float s, c;
    sincosf(rope2d_angle(j, p.head_dim / 4, p.pos_hw[2 * t], p.pos_hw[2 * t + 1], p.inv_freq), &s, &c);
    a.cos_sin[i] = make_float2(c, s);
  }
}

template <typename T, int D>
__global__ void dq_finalize_kernel(const AttnDevArgs a) {
  constexpr int HALF = D / 2;
  const AttentionParams& p = a.p;
  const int64_t total = p.num_tokens * p.num_heads * HALF;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (bad_cu_seqlens(a)) {  // the main backward kernel had no work: every gradient is NaN
    fill_nan_thd(static_cast<T*>(p.dq), p.dq_stride_token, p.dq_stride_head, p);
    fill_nan_thd(static_cast<T*>(p.dk), p.dk_stride_token, p.dk_stride_head, p);
    fill_nan_thd(static_cast<T*>(p.dv), p.dv_stride_token, p.dv_stride_head, p);
    return;
  }
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

// Checked mode: NaN in every output element before anything runs, so an unwritten row cannot pass.
template <typename T>
__global__ void nan_fill_kernel(T* x, int64_t stride_token, int64_t stride_head, const AttentionParams p) {
  fill_nan_thd(x, stride_token, stride_head, p);
}

struct Output {
  void* data;
  int64_t stride_token, stride_head;
};

void debug_nan_fill(const AttentionParams& p, std::initializer_list<Output> outputs, bool lse, cudaStream_t s) {
  // 0xFF bytes: NaN in fp32, bf16 and fp16 alike (and -1 in the int32 regions, all rewritten by the scan).
  check_cuda(cudaMemsetAsync(p.workspace, 0xFF, p.workspace_bytes, s), "VL3FAST_CUDA_DEBUG workspace NaN fill");
  if (lse)
    check_cuda(cudaMemsetAsync(p.lse, 0xFF, p.num_tokens * p.num_heads * sizeof(float), s),
               "VL3FAST_CUDA_DEBUG lse NaN fill");
  for (const Output& o : outputs) {
    VL3FAST_DISPATCH_FLOATING(p.dtype, float, __nv_bfloat16, __half, "rope2d_attention", [&] {
      nan_fill_kernel<scalar_t><<<grid_for(p.num_tokens * p.num_heads * p.head_dim, 256), 256, 0, s>>>(
          static_cast<scalar_t*>(o.data), o.stride_token, o.stride_head, p);
    });
    check_launch(kernel_name("nan_fill_kernel", p.dtype, p.head_dim), s);
  }
}

// Checked mode: the device-side input checks of the scan, raised as a ValueError naming the argument.
void raise_on_status(const AttnDevArgs& a, int64_t max_seqlen, cudaStream_t s) {
  int32_t status = 0;
  check_cuda(cudaMemcpyAsync(&status, a.status, sizeof(status), cudaMemcpyDeviceToHost, s),
             "VL3FAST_CUDA_DEBUG status read");
  check_cuda(cudaStreamSynchronize(s), "VL3FAST_CUDA_DEBUG status read");
  if (status & kStatusBadCuSeqlens)
    throw std::invalid_argument("cu_seqlens: inconsistent (checked on the device: it must start at 0, be "
                                "non-decreasing and end at T = " + std::to_string(a.p.num_tokens) +
                                "); without VL3FAST_CUDA_DEBUG every output is NaN");
  if (status & kStatusMaxSeqlenTooSmall)
    throw std::invalid_argument("max_seqlen: the hint " + std::to_string(max_seqlen) +
                                " is below the longest segment of cu_seqlens (checked on the device; without "
                                "VL3FAST_CUDA_DEBUG the results are still right, only the grid is smaller)");
}

// Every call starts here: the checked-mode NaN fill, then the block table with the device-side checks.
void begin_call(const AttnDevArgs& a, int block, int64_t max_seqlen, bool backward, cudaStream_t s) {
  const AttentionParams& p = a.p;
  const bool debug = debug_mode();
  if (debug && backward)
    debug_nan_fill(p, {{p.dq, p.dq_stride_token, p.dq_stride_head}, {p.dk, p.dk_stride_token, p.dk_stride_head},
                       {p.dv, p.dv_stride_token, p.dv_stride_head}}, false, s);
  else if (debug)
    debug_nan_fill(p, {{p.out, p.out_stride_token, p.out_stride_head}}, true, s);
  block_table_kernel<<<1, kScanThreads, 0, s>>>(p.cu_seqlens, p.num_segments, p.num_tokens, block, max_seqlen,
                                                const_cast<int32_t*>(a.block_start), a.status);
  check_launch("block_table_kernel", s);
  if (debug) raise_on_status(a, max_seqlen, s);
}

void check_workspace(const AttentionParams& p, int64_t needed) {
  if (p.workspace_bytes < needed)
    throw std::invalid_argument("rope2d_attention: CUDA workspace too small (" + std::to_string(p.workspace_bytes) +
                                " < " + std::to_string(needed) + " bytes)");
}

AttnDevArgs tc_dev_args(const AttentionParams& p, bool backward) {
  const attn_tc::Workspace w = attn_tc::workspace_layout(p.num_tokens, p.num_segments, p.num_heads, p.head_dim,
                                                         backward);
  check_workspace(p, w.total);
  auto* base = static_cast<unsigned char*>(p.workspace);
  AttnDevArgs a;
  a.p = p;
  a.status = reinterpret_cast<int32_t*>(base + w.status);
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

AttnDevArgs simple_dev_args(const AttentionParams& p, bool backward) {
  const attn_simple::Workspace w =
      attn_simple::workspace_layout(p.num_tokens, p.num_segments, p.num_heads, p.head_dim, backward);
  check_workspace(p, w.total);
  auto* base = static_cast<unsigned char*>(p.workspace);
  AttnDevArgs a;
  a.p = p;
  a.status = reinterpret_cast<int32_t*>(base + w.status);
  a.block_start = reinterpret_cast<const int32_t*>(base + w.block_start);
  a.cos_sin = reinterpret_cast<float2*>(base + w.cos_sin);
  if (backward) a.delta = reinterpret_cast<float*>(base + w.delta);
  return a;
}

void launch_delta(const AttnDevArgs& a, cudaStream_t s) {
  const AttentionParams& p = a.p;
  VL3FAST_DISPATCH_FLOATING(p.dtype, float, __nv_bfloat16, __half, "rope2d_attention_backward", [&] {
    delta_kernel<scalar_t><<<grid_for(p.num_tokens * p.num_heads * 32, 256), 256, 0, s>>>(a);
  });
  check_launch(kernel_name("delta_kernel", p.dtype, p.head_dim), s);
}

// The tensor-core pre-passes: block table (+ checks), the dq accumulator cleared, the cos/sin table with
// rotated k (and q), delta.  Their outputs stay in the workspace (the test-only prepass entry reads them).
void tc_prepass(const AttnDevArgs& a, int64_t max_seqlen, bool backward, cudaStream_t s) {
  const AttentionParams& p = a.p;
  begin_call(a, backward ? kBlockN : kBlockM, max_seqlen, backward, s);
  if (backward) {
    const attn_tc::Workspace w = attn_tc::workspace_layout(p.num_tokens, p.num_segments, p.num_heads, p.head_dim,
                                                           true);
    check_cuda(cudaMemsetAsync(a.dq_accum, 0, w.total - w.dq_accum, s), "rope2d_attention dq workspace clear");
  }
  attn_tc_dispatch(p.dtype, p.head_dim, "rope2d_attention", [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int D = decltype(dim)::value;
    rope_prep_kernel<T, D><<<grid_for(p.num_tokens * (qk_dim(D) / 2), 256), 256, 0, s>>>(a, backward);
    check_launch(kernel_name("rope_prep_kernel", p.dtype, D), s);
  });
  if (backward) launch_delta(a, s);
}

// The simple kernel's pre-passes: block table (+ checks), cos/sin table, delta.
void simple_prepass(const AttnDevArgs& a, int64_t max_seqlen, bool backward, cudaStream_t s) {
  const AttentionParams& p = a.p;
  begin_call(a, attn_simple::kBlock, max_seqlen, backward, s);
  rope_table_kernel<<<grid_for(p.num_tokens * (p.head_dim / 2), 256), 256, 0, s>>>(a);
  check_launch("rope_table_kernel", s);
  if (backward) launch_delta(a, s);
}

}  // namespace

void rope2d_attention_forward(const AttentionParams& p, int64_t max_seqlen, AttentionKernel kernel, int device,
                              uintptr_t stream) {
  DeviceGuard guard(device);
  auto* s = reinterpret_cast<cudaStream_t>(stream);
  if (kernel == AttentionKernel::kSimple) {
    const AttnDevArgs a = simple_dev_args(p, false);
    simple_prepass(a, max_seqlen, false, s);
    attention_simple_fwd_main(a, launch_grid_x(p.num_tokens, p.num_segments, attn_simple::kBlock, max_seqlen), s);
    return;
  }
  const AttnDevArgs a = tc_dev_args(p, false);
  tc_prepass(a, max_seqlen, false, s);
  attention_fwd_main(a, launch_grid_x(p.num_tokens, p.num_segments, kBlockM, max_seqlen), s);
}

void rope2d_attention_backward(const AttentionParams& p, int64_t max_seqlen, AttentionKernel kernel, int device,
                               uintptr_t stream) {
  DeviceGuard guard(device);
  auto* s = reinterpret_cast<cudaStream_t>(stream);
  if (kernel == AttentionKernel::kSimple) {
    const AttnDevArgs a = simple_dev_args(p, true);
    simple_prepass(a, max_seqlen, true, s);
    attention_simple_bwd_main(a, launch_grid_x(p.num_tokens, p.num_segments, attn_simple::kBlock, max_seqlen), s);
    return;
  }
  const AttnDevArgs a = tc_dev_args(p, true);
  tc_prepass(a, max_seqlen, true, s);
  // The hint-free bound: the backward kernel computes one work item per CTA (attention_bwd.cu).
  attention_bwd_main(a, launch_grid_x(p.num_tokens, p.num_segments, kBlockN, -1), s);
  attn_tc_dispatch(p.dtype, p.head_dim, "rope2d_attention_backward", [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int D = decltype(dim)::value;
    dq_finalize_kernel<T, D><<<grid_for(p.num_tokens * p.num_heads * (D / 2), 256), 256, 0, s>>>(a);
    check_launch(kernel_name("dq_finalize_kernel", p.dtype, D), s);
  });
}

void rope2d_attention_prepass(const AttentionParams& p, int64_t max_seqlen, bool backward, int device,
                              uintptr_t stream) {
  DeviceGuard guard(device);
  tc_prepass(tc_dev_args(p, backward), max_seqlen, backward, reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace vl3fast::cuda
