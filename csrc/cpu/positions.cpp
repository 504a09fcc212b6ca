// CPU fill of pos_hw and cu_seqlens; integer work only, so it is built once (no ISA variants).
// Positions repeat in every frame of an item, so frame 0 is computed with the shared per-patch helper
// (the same arithmetic the CUDA kernel runs per token) and copied to the other frames.
#include "positions.h"

#include <cstring>

#include "vl3fast/positions.h"

namespace vl3fast::cpu {

void rope2d_position_ids(const PositionIdsParams& p) {
#pragma omp parallel for schedule(dynamic, 1) if (p.num_tokens > 65536)
  for (int64_t item = 0; item < p.num_items; ++item) {
    const int64_t* row = p.item_table + item * kGridFields;
    const int64_t frame_len = row[kGridH] * row[kGridW];
    int32_t* first = p.pos_hw + 2 * row[kGridPatchOffset];
    for (int64_t local = 0; local < frame_len; ++local)
      write_patch_position(local, row[kGridW], row[kGridMerge], first + 2 * local);
    for (int64_t frame = 1; frame < row[kGridT]; ++frame)
      std::memcpy(first + 2 * frame * frame_len, first, sizeof(int32_t) * 2 * frame_len);
  }
  p.cu_seqlens[0] = 0;
  for (int64_t frame = 0; frame < p.num_frames; ++frame) write_frame_end(p.item_table, p.num_items, frame, p.cu_seqlens);
}

}  // namespace vl3fast::cpu
