// Binary search over a row-major int64 table whose column `field` is non-decreasing from 0: used to map a
// packed token or frame index to its item (positions.h, pruning.h) on the CPU and the GPU alike.
#pragma once
#include <cstdint>

#include "vl3fast/host_device.h"

namespace vl3fast {

// Largest row i in [0, n) with table[i * stride + field] <= value.
VL3FAST_HD int64_t last_row_at_most(const int64_t* table, int64_t n, int stride, int field, int64_t value) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (table[mid * stride + field] <= value) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace vl3fast
