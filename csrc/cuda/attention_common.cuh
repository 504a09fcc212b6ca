// Shared by the CUDA rope2d attention sources: the device-side argument block and the one dispatch over
// the supported dtype x head-dim list (vl3fast/attention_tc.h), whose default throws naming that list.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "check.cuh"
#include "vl3fast/attention_tc.h"
#include "vl3fast/params.h"

namespace vl3fast::cuda {

// AttentionParams plus the workspace regions (attn_tc::Workspace or attn_simple::Workspace) resolved to
// pointers (the simple kernel has no k_rot, q_rot or dq_accum).
struct AttnDevArgs {
  AttentionParams p;
  int32_t* status = nullptr;  // attn_tc::kStatus* bits, written by the block-table scan
  const int32_t* block_start = nullptr;
  float2* cos_sin = nullptr;
  void* k_rot = nullptr;
  void* q_rot = nullptr;
  float* delta = nullptr;
  float* dq_accum = nullptr;
};

template <typename T>
struct TypeTag {
  using type = T;
};

inline std::string attn_tc_head_dims_text() {
  std::string s;
#define VL3FAST_HD_TEXT(DIM) s += (s.empty() ? "" : ", ") + std::to_string(DIM);
  VL3FAST_ATTN_TC_HEAD_DIMS(VL3FAST_HD_TEXT)
#undef VL3FAST_HD_TEXT
  return s;
}

// f(TypeTag<T>{}, std::integral_constant<int, D>{}) for the runtime (dtype, head_dim); anything outside
// the list throws std::invalid_argument (a Python ValueError).
template <typename F>
void attn_tc_dispatch(DType dtype, int head_dim, const char* name, F&& f) {
  auto by_dim = [&](auto tag) {
    switch (head_dim) {
#define VL3FAST_HD_CASE(DIM) \
  case DIM: f(tag, std::integral_constant<int, DIM>{}); return;
      VL3FAST_ATTN_TC_HEAD_DIMS(VL3FAST_HD_CASE)
#undef VL3FAST_HD_CASE
      default:
        throw std::invalid_argument(std::string(name) + ": head dim " + std::to_string(head_dim) +
                                    " has no CUDA kernel (supported: " + attn_tc_head_dims_text() + ")");
    }
  };
  switch (dtype) {
#define VL3FAST_DT_CASE(CODE, TYPE) \
  case CODE: by_dim(TypeTag<TYPE>{}); return;
    VL3FAST_ATTN_TC_DTYPES(VL3FAST_DT_CASE)
#undef VL3FAST_DT_CASE
    default:
      throw std::invalid_argument(std::string(name) + ": dtype " + dtype_name(dtype) +
                                  " has no CUDA kernel (supported: bfloat16, float16)");
  }
}

// "attn_fwd_kernel<bfloat16, 72>": how checked mode names a launch.
inline std::string kernel_name(const char* base, DType dtype, int head_dim) {
  return std::string(base) + "<" + dtype_name(dtype) + ", " + std::to_string(head_dim) + ">";
}

#ifdef __CUDACC__
// A malformed cu_seqlens (status bit set by the scan): the kernels write NaN to every element of their
// outputs instead of computing, so a result is never uninitialised memory.  `x` is [T, H, D] with the
// given strides; the grid's CTAs share the work (any grid shape).
template <typename T>
__device__ void fill_nan_thd(T* x, int64_t stride_token, int64_t stride_head, const AttentionParams& p) {
  const int64_t cta = blockIdx.x + static_cast<int64_t>(gridDim.x) * (blockIdx.y + static_cast<int64_t>(gridDim.y) * blockIdx.z);
  const int64_t ctas = static_cast<int64_t>(gridDim.x) * gridDim.y * gridDim.z;
  const int64_t total = p.num_tokens * p.num_heads * p.head_dim;
  T nan_value;
  if constexpr (std::is_same_v<T, float>) nan_value = __int_as_float(0x7fffffff);
  else if constexpr (std::is_same_v<T, __half>) nan_value = __ushort_as_half(0x7fff);
  else nan_value = __ushort_as_bfloat16(0x7fff);
  for (int64_t e = cta * blockDim.x + threadIdx.x; e < total; e += ctas * blockDim.x) {
    const int64_t t = e / (static_cast<int64_t>(p.num_heads) * p.head_dim);
    const int64_t h = (e / p.head_dim) % p.num_heads;
    x[t * stride_token + h * stride_head + e % p.head_dim] = nan_value;
  }
}
__device__ inline void fill_nan_lse(const AttentionParams& p) {
  const int64_t cta = blockIdx.x + static_cast<int64_t>(gridDim.x) * blockIdx.y;
  const int64_t ctas = static_cast<int64_t>(gridDim.x) * gridDim.y;
  for (int64_t e = cta * blockDim.x + threadIdx.x; e < p.num_tokens * p.num_heads; e += ctas * blockDim.x)
    p.lse[e] = __int_as_float(0x7fffffff);
}
__device__ inline bool bad_cu_seqlens(const AttnDevArgs& a) { return (*a.status & attn_tc::kStatusBadCuSeqlens) != 0; }
#endif

// attention.cu: the block-table scan of every call (it also checks cu_seqlens and the max_seqlen hint on the
// device, into the status word) and checked mode's read of that status (a ValueError naming the argument).
void launch_block_table(const AttnDevArgs& a, int block, int64_t max_seqlen, cudaStream_t s);
void raise_on_status(const AttnDevArgs& a, int64_t max_seqlen, cudaStream_t s);

// The call bodies.  Each resolves the call's (dtype, head dim) with one dispatch (attn_tc_dispatch for the
// tensor-core kernel, the dtype alone for the simple kernel) and runs every launch of the call, pre-passes
// included (attention_prepass.cuh), with the types it resolved.
void attention_tc_forward(const AttnDevArgs& a, int64_t max_seqlen, cudaStream_t s);   // attention_fwd.cu
void attention_tc_backward(const AttnDevArgs& a, int64_t max_seqlen, cudaStream_t s);  // attention_bwd.cu
void attention_simple_call(const AttnDevArgs& a, int64_t max_seqlen, bool backward,     // attention_simple.cu
                           cudaStream_t s);

#ifdef __CUDACC__
// One main kernel over (grid_x, heads) CTAs of `threads` with `smem` bytes of dynamic shared memory, named
// for checked mode ("attn_fwd_kernel<bfloat16, 72>").
template <typename Kernel>
void launch_main(Kernel kernel, const char* base, const AttnDevArgs& a, int smem, int64_t grid_x, int threads,
                 cudaStream_t s) {
  const std::string name = kernel_name(base, a.p.dtype, a.p.head_dim);
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
             name + " shared-memory attribute");
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(a.p.num_heads));
  kernel<<<grid, threads, smem, s>>>(a);
  check_launch(name, s);
}
#endif

}  // namespace vl3fast::cuda
