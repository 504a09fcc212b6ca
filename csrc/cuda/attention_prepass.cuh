// The typed pre-passes of a CUDA rope2d attention call, shared by the three call bodies (attention_fwd.cu,
// attention_bwd.cu, attention_simple.cu) and the test-only pre-pass entry (attention.cu).  Each body resolves
// (dtype, head dim) once, with one dispatch, and runs these with the types it resolved:
//   begin_call<T>         checked-mode NaN fill, then the block table (+ device-side input checks)
//   rope_prep_kernel<T,D> cos/sin table [T, D/2] (fp32 angles) + rotated k (and q for the backward) in the
//                         tensor-core layout [H, T, D_qk] with zero pad channels
//   delta_kernel<T>       rowsum(dout * out) per (head, token), fp32 (backward, both kernels)
// Everything here has internal linkage (an unnamed namespace): each translation unit instantiates the
// kernels it launches and registers them with its own module.  Compiles, unverified on a GPU.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention_common.cuh"
#include "check.cuh"
#include "convert.cuh"
#include "vl3fast/rope_math.h"

namespace vl3fast::cuda {
namespace {

// Checked mode: NaN in every output element before anything runs, so an unwritten row cannot pass.
template <typename T>
__global__ void nan_fill_kernel(T* x, int64_t stride_token, int64_t stride_head, const AttentionParams p) {
  fill_nan_thd(x, stride_token, stride_head, p);
}

struct Output {
  void* data;
  int64_t stride_token, stride_head;
};

template <typename T>
void debug_nan_fill(const AttentionParams& p, bool backward, cudaStream_t s) {
  // 0xFF bytes: NaN in fp32, bf16 and fp16 alike (and -1 in the int32 regions, all rewritten by the scan).
  check_cuda(cudaMemsetAsync(p.workspace, 0xFF, p.workspace_bytes, s), "VL3FAST_CUDA_DEBUG workspace NaN fill");
  if (!backward)
    check_cuda(cudaMemsetAsync(p.lse, 0xFF, p.num_tokens * p.num_heads * sizeof(float), s),
               "VL3FAST_CUDA_DEBUG lse NaN fill");
  const Output forward_outputs[] = {{p.out, p.out_stride_token, p.out_stride_head}};
  const Output backward_outputs[] = {{p.dq, p.dq_stride_token, p.dq_stride_head},
                                     {p.dk, p.dk_stride_token, p.dk_stride_head},
                                     {p.dv, p.dv_stride_token, p.dv_stride_head}};
  const Output* outputs = backward ? backward_outputs : forward_outputs;
  for (int i = 0; i < (backward ? 3 : 1); ++i) {
    const Output& o = outputs[i];
    nan_fill_kernel<T><<<grid_for(p.num_tokens * p.num_heads * p.head_dim, 256), 256, 0, s>>>(
        static_cast<T*>(o.data), o.stride_token, o.stride_head, p);
    check_launch(kernel_name("nan_fill_kernel", p.dtype, p.head_dim), s);
  }
}

// Every call starts here: the checked-mode NaN fill, then the block table with the device-side checks.
template <typename T>
void begin_call(const AttnDevArgs& a, int block, int64_t max_seqlen, bool backward, cudaStream_t s) {
  const bool debug = debug_mode();
  if (debug) debug_nan_fill<T>(a.p, backward, s);
  launch_block_table(a, block, max_seqlen, s);
  if (debug) raise_on_status(a, max_seqlen, s);
}

template <typename T, int D>
__global__ void rope_prep_kernel(const AttnDevArgs a, bool with_q) {
  constexpr int DQ = attn_tc::qk_dim(D), HALF = D / 2, PAIRS = DQ / 2;
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

template <typename T>
void launch_delta(const AttnDevArgs& a, cudaStream_t s) {
  const AttentionParams& p = a.p;
  delta_kernel<T><<<grid_for(p.num_tokens * p.num_heads * 32, 256), 256, 0, s>>>(a);
  check_launch(kernel_name("delta_kernel", p.dtype, p.head_dim), s);
}

// The tensor-core pre-passes: begin_call, the dq accumulator cleared, the cos/sin table with rotated k (and
// q), delta.  Their outputs stay in the workspace (the test-only pre-pass entry reads them).
template <typename T, int D>
void tc_prepass(const AttnDevArgs& a, int64_t max_seqlen, bool backward, cudaStream_t s) {
  const AttentionParams& p = a.p;
  begin_call<T>(a, backward ? attn_tc::kBlockN : attn_tc::kBlockM, max_seqlen, backward, s);
  if (backward) {
    const attn_tc::Workspace w = attn_tc::workspace_layout(p.num_tokens, p.num_segments, p.num_heads, p.head_dim,
                                                           true);
    check_cuda(cudaMemsetAsync(a.dq_accum, 0, w.total - w.dq_accum, s), "rope2d_attention dq workspace clear");
  }
  rope_prep_kernel<T, D><<<grid_for(p.num_tokens * (attn_tc::qk_dim(D) / 2), 256), 256, 0, s>>>(a, backward);
  check_launch(kernel_name("rope_prep_kernel", p.dtype, D), s);
  if (backward) launch_delta<T>(a, s);
}

}  // namespace
}  // namespace vl3fast::cuda
