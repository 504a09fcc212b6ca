// Shared pieces of the pybind11 module vl3fast._C (csrc/bindings/*.cpp).  No torch here (DESIGN.md §3).
// Each op family's file checks what its kernels rely on, builds a params struct and calls the CPU kernel
// table or the CUDA launcher for the tensors' device, then registers its functions with bind_<family>().
// module.cpp holds the module table and calls every bind_<family>() once.
#pragma once
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <string>

#include "vl3fast/rope_math.h"
#include "vl3fast/tensor_ref.h"

namespace vl3fast::bindings {

// All tensors of one call must live on the same device; returns it (-1 for host).
inline int common_device(std::initializer_list<const TensorRef*> refs, const char* op) {
  const int device = (*refs.begin())->device_index;
  for (const TensorRef* r : refs)
    expect(r->device_index == device, std::string(op) + ": all tensors must be on the same device");
#ifndef VL3FAST_WITH_CUDA
  expect(device < 0, std::string(op) + ": vl3fast was built without its CUDA backend");
#endif
  return device;
}

// The head-dim check of every rope2d op (the bound is declared once, in vl3fast/rope_math.h).
inline void expect_head_dim(int64_t head_dim, const char* op) {
  expect(head_dim_supported(head_dim), std::string(op) + ": head_dim must be a multiple of " +
                                           std::to_string(kHeadDimMultiple) + " in [" + std::to_string(kMinHeadDim) +
                                           ", " + std::to_string(kMaxHeadDim) + "], got " + std::to_string(head_dim));
}

// The RoPE inputs of apply_rope2d and rope2d attention: pos_hw int32 [T, 2] and inv_freq float32 [D / 4],
// both contiguous.
inline void expect_rope_inputs(const TensorRef& pos_hw, const TensorRef& inv_freq, int64_t num_tokens,
                               int64_t head_dim) {
  expect_ref(pos_hw, "pos_hw", DType::kInt32, 2);
  expect(pos_hw.sizes[0] == num_tokens && pos_hw.sizes[1] == 2 && is_contiguous(pos_hw),
         "pos_hw: expected contiguous [T, 2]");
  expect_ref(inv_freq, "inv_freq", DType::kFloat32, 1);
  expect(inv_freq.sizes[0] == head_dim / 4 && is_contiguous(inv_freq), "inv_freq: expected contiguous [D / 4]");
}

// A [T, H, D] operand into its params fields: the data pointer and the token and head strides (the last
// dim is contiguous, checked by the caller).
template <typename Ptr>
void set_thd(const TensorRef& t, Ptr& data, int64_t& stride_token, int64_t& stride_head) {
  data = static_cast<Ptr>(t.data);
  stride_token = t.strides[0];
  stride_head = t.strides[1];
}

void bind_info(pybind11::module_& m);       // info.cpp: version, ISA levels, CUDA archs and devices
void bind_rope(pybind11::module_& m);       // rope.cpp: position ids and the standalone 2D RoPE
void bind_attention(pybind11::module_& m);  // attention.cpp: rope2d attention forward/backward
void bind_pruning(pybind11::module_& m);    // pruning.cpp: frame keep mask and keep compaction
void bind_testing(pybind11::module_& m);    // testing.cpp: test-only views of the CUDA index helpers

}  // namespace vl3fast::bindings
