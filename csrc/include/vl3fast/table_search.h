// The one binary search over a row-major table whose column `field` is non-decreasing: maps a packed
// patch, frame or merged token to its item (packed_grid.h), and an attention work item to its segment
// (vl3fast/attention_tc.h on the GPU, cpu/attention_kernel.h), on the CPU and the GPU alike.
#pragma once
#include <cstdint>

#include "vl3fast/host_device.h"

namespace vl3fast {

// Largest row i in [0, n) with table[i * stride + field] <= value.
// (Rows with equal values, e.g. empty segments, resolve to the last of them.)
template <typename T>
VL3FAST_HD int64_t last_row_at_most(const T* table, int64_t n, int stride, int field, int64_t value) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (table[mid * stride + field] <= value) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace vl3fast
