// The packed grid's one item table and the index arithmetic over it, shared by the position ids and the
// pruning kernels on the CPU and the GPU (VL3FAST_HD), so CPU tests exercise what a GPU runs.
//
// Layout (spec A).  A packed batch is items (images, videos) -> frames (an image is one frame) -> merged
// blocks (row-major over (h/m, w/m)) -> in-block patches (r, c) row-major.  pixel_values rows, RoPE
// positions and the encoder's patches follow that order; merged tokens are numbered item -> frame -> block.
// Each frame is one attention segment.
//
// The table is built once per batch on the host by vl3fast/ops/packed_grid.py (PackedGrid.item_table)
// from the validated grid; kernels trust it.
#pragma once
#include <cstdint>

#include "vl3fast/host_device.h"
#include "vl3fast/table_search.h"

namespace vl3fast {

// One row per item: its grid and where it starts in the patch, frame and merged-token numbering.
enum GridField : int {
  kGridT = 0, kGridH = 1, kGridW = 2, kGridMerge = 3,
  kGridPatchOffset = 4,  // first pixel row (patch) of the item
  kGridFrameOffset = 5,  // first frame (attention segment) of the item
  kGridTokenOffset = 6,  // first merged token of the item
  kGridFields = 7
};

// Item of a packed patch, frame or merged token: the last row whose `field` offset is <= value.
VL3FAST_HD int64_t grid_item_of(const int64_t* table, int64_t n, int field, int64_t value) {
  return last_row_at_most(table, n, kGridFields, field, value);
}

VL3FAST_HD int64_t tokens_per_frame(const int64_t* row) {
  return (row[kGridH] / row[kGridMerge]) * (row[kGridW] / row[kGridMerge]);
}

// Global frame `frame`: its item, its merged tokens [begin, end) and its pixel rows [patch_begin, patch_end).
struct FrameSpan {
  int64_t item;
  int64_t begin;        // first merged token
  int64_t end;          // one past the last merged token
  int64_t patch_begin;  // first pixel row
  int64_t patch_end;    // one past the last pixel row
  int64_t merge;        // m
  int64_t frame_in_item;
};

VL3FAST_HD FrameSpan frame_span(const int64_t* table, int64_t num_items, int64_t frame) {
  FrameSpan s;
  s.item = grid_item_of(table, num_items, kGridFrameOffset, frame);
  const int64_t* row = table + s.item * kGridFields;
  const int64_t n = tokens_per_frame(row);
  s.frame_in_item = frame - row[kGridFrameOffset];
  s.begin = row[kGridTokenOffset] + s.frame_in_item * n;
  s.end = s.begin + n;
  s.merge = row[kGridMerge];
  s.patch_begin = row[kGridPatchOffset] + s.frame_in_item * row[kGridH] * row[kGridW];
  s.patch_end = s.patch_begin + row[kGridH] * row[kGridW];
  return s;
}

// First pixel row of merged token `token_in_item` (counted from the item start) of item row `row`.
VL3FAST_HD int64_t token_first_patch(const int64_t* row, int64_t token_in_item) {
  return row[kGridPatchOffset] + token_in_item * row[kGridMerge] * row[kGridMerge];
}

struct PatchPosition {
  int32_t row;
  int32_t col;
};

// (row, col) of the patch at `local` (index inside its frame, merge-block order) for a frame of width w,
// merge size m: the RoPE position of that patch.
VL3FAST_HD PatchPosition patch_position(int64_t local, int64_t w, int64_t m) {
  const int64_t block = local / (m * m);
  const int64_t in_block = local - block * m * m;
  const int64_t blocks_per_row = w / m;
  const int64_t block_row = block / blocks_per_row;
  const int64_t block_col = block - block_row * blocks_per_row;
  return {static_cast<int32_t>(block_row * m + in_block / m), static_cast<int32_t>(block_col * m + in_block % m)};
}

// Writes patch_position(local, w, m) to pos[0], pos[1].
VL3FAST_HD void write_patch_position(int64_t local, int64_t w, int64_t m, int32_t* pos) {
  const PatchPosition p = patch_position(local, w, m);
  pos[0] = p.row;
  pos[1] = p.col;
}

}  // namespace vl3fast
