// Shared by the CUDA rope2d attention sources: the device-side argument block and the one dispatch over
// the supported dtype x head-dim list (vl3fast/attention_tc.h), whose default throws naming that list.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "vl3fast/attention_tc.h"
#include "vl3fast/params.h"

namespace vl3fast::cuda {

// AttentionParams plus the workspace regions (attn_tc::Workspace) resolved to pointers.
struct AttnDevArgs {
  AttentionParams p;
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

// Defined in attention_fwd.cu / attention_bwd.cu (each instantiates the whole list through the dispatch).
void attention_fwd_main(const AttnDevArgs& a, int64_t grid_x, cudaStream_t stream);
void attention_bwd_main(const AttnDevArgs& a, int64_t grid_x, cudaStream_t stream);

}  // namespace vl3fast::cuda
