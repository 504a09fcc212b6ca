// Per-patch (row, col) positions and per-frame cu_seqlens of a packed visual batch, one thread per
// patch / frame on the GPU; the CPU path (cpu/positions.cpp) uses the same helpers.  Positions repeat in
// every frame of an item (layout and table: packed_grid.h).
#pragma once
#include <cstdint>

#include "vl3fast/host_device.h"
#include "vl3fast/packed_grid.h"

namespace vl3fast {

// Fills pos_hw[2*patch .. 2*patch+1] for one packed patch.
VL3FAST_HD void write_token_position(const int64_t* table, int64_t num_items, int64_t patch, int32_t* pos_hw) {
  const int64_t* row = table + grid_item_of(table, num_items, kGridPatchOffset, patch) * kGridFields;
  const int64_t local = (patch - row[kGridPatchOffset]) % (row[kGridH] * row[kGridW]);
  write_patch_position(local, row[kGridW], row[kGridMerge], pos_hw + 2 * patch);
}

// Fills cu_seqlens[frame + 1] (the end of global frame `frame`); cu_seqlens[0] is written by the caller.
VL3FAST_HD void write_frame_end(const int64_t* table, int64_t num_items, int64_t frame, int32_t* cu_seqlens) {
  cu_seqlens[frame + 1] = static_cast<int32_t>(frame_span(table, num_items, frame).patch_end);
}

}  // namespace vl3fast
