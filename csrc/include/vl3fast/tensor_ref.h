// TensorRef: a non-owning view of a tensor (pointer, dtype, sizes, strides in elements, device).
// It is the only thing that crosses from Python into the compiled core: no torch headers, no
// libtorch, so one wheel serves every torch version.  Memory is owned and allocated by the caller
// (destination passing); kernels never allocate.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "vl3fast/dtype.h"

namespace vl3fast {

constexpr int kMaxDims = 4;

struct TensorRef {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  int32_t ndim = 0;
  int64_t sizes[kMaxDims] = {0, 0, 0, 0};
  int64_t strides[kMaxDims] = {0, 0, 0, 0};
  int32_t device_index = -1;  // -1: host memory; >= 0: CUDA device ordinal

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= sizes[i];
    return n;
  }
};

// Defensive checks at the C++ boundary.  The Python layer validates first with friendlier
// messages; these exist so that a direct caller of vl3fast._C still gets an exception, not a crash.
inline void expect(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

inline void expect_ref(const TensorRef& t, const char* name, DType dtype, int ndim) {
  expect(t.data != nullptr || t.numel() == 0, std::string(name) + ": null data pointer");
  expect(t.dtype == dtype, std::string(name) + ": expected dtype " + dtype_name(dtype) + ", got " +
                               dtype_name(t.dtype));
  expect(t.ndim == ndim, std::string(name) + ": expected " + std::to_string(ndim) + " dims, got " +
                             std::to_string(t.ndim));
}

// torch's meaning: row-major strides, size-1 dims free; an empty tensor is contiguous (no element is read).
inline bool is_contiguous(const TensorRef& t) {
  if (t.numel() == 0) return true;
  int64_t expected = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.sizes[i] != 1 && t.strides[i] != expected) return false;
    expected *= t.sizes[i];
  }
  return true;
}

}  // namespace vl3fast
