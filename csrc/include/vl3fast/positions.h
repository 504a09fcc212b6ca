// Patch index -> (row, col) for VideoLLaMA3's packed visual sequence.
//
// Rows of pixel_values are ordered item -> frame -> merged block (row-major over (h/m, w/m)) ->
// in-block (r, c) row-major (spec A, "Input layout"); RoPE positions follow the same order and are
// repeated per frame.  Each frame is its own attention segment.
#pragma once
#include <cstdint>

#include "vl3fast/host_device.h"
#include "vl3fast/table_search.h"

namespace vl3fast {

// One row of the item table built by vl3fast/ops/positions.py: grid, merge size and where the
// item starts in the token and frame (segment) numbering.
enum ItemField : int { kT = 0, kH = 1, kW = 2, kMerge = 3, kTokenOffset = 4, kFrameOffset = 5, kItemFields = 6 };

// Item of a packed token or frame: the last row whose offset column is <= the index.
VL3FAST_HD int64_t upper_item(const int64_t* table, int64_t n, int field, int64_t value) {
  return last_row_at_most(table, n, kItemFields, field, value);
}

struct PatchPosition {
  int32_t row;
  int32_t col;
};

// Position of the patch at `local` (index inside its frame) for a frame of width w, merge size m.
VL3FAST_HD PatchPosition patch_position(int64_t local, int64_t w, int64_t m) {
  const int64_t block = local / (m * m);
  const int64_t in_block = local - block * m * m;
  const int64_t blocks_per_row = w / m;
  const int64_t block_row = block / blocks_per_row;
  const int64_t block_col = block - block_row * blocks_per_row;
  return {static_cast<int32_t>(block_row * m + in_block / m), static_cast<int32_t>(block_col * m + in_block % m)};
}

// Fills pos_hw[2*token .. 2*token+1] for one packed token.
VL3FAST_HD void write_token_position(const int64_t* table, int64_t num_items, int64_t token, int32_t* pos_hw) {
  const int64_t item = upper_item(table, num_items, kTokenOffset, token);
  const int64_t* row = table + item * kItemFields;
  const int64_t frame_len = row[kH] * row[kW];
  const int64_t local = (token - row[kTokenOffset]) % frame_len;
  const PatchPosition p = patch_position(local, row[kW], row[kMerge]);
  pos_hw[2 * token] = p.row;
  pos_hw[2 * token + 1] = p.col;
}

// Fills cu_seqlens[frame + 1] (the end of global frame `frame`); cu_seqlens[0] is written by the caller.
VL3FAST_HD void write_frame_end(const int64_t* table, int64_t num_items, int64_t frame, int32_t* cu_seqlens) {
  const int64_t item = upper_item(table, num_items, kFrameOffset, frame);
  const int64_t* row = table + item * kItemFields;
  const int64_t frame_in_item = frame - row[kFrameOffset];
  cu_seqlens[frame + 1] = static_cast<int32_t>(row[kTokenOffset] + (frame_in_item + 1) * row[kH] * row[kW]);
}

}  // namespace vl3fast
