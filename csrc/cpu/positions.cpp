// CPU fill of pos_hw and cu_seqlens; integer work only, so it is built once (no ISA variants).
#include "positions.h"

#include "vl3fast/positions.h"

namespace vl3fast::cpu {

void rope2d_position_ids(const PositionIdsParams& p) {
#pragma omp parallel for schedule(static) if (p.num_tokens > 32768)
  for (int64_t token = 0; token < p.num_tokens; ++token) write_token_position(p.item_table, p.num_items, token, p.pos_hw);
  p.cu_seqlens[0] = 0;
  for (int64_t frame = 0; frame < p.num_frames; ++frame) write_frame_end(p.item_table, p.num_items, frame, p.cu_seqlens);
}

}  // namespace vl3fast::cpu
