// The kernel table of one ISA build: every CPU kernel is listed here once.
#include "../isa.h"

namespace vl3fast::cpu::VL3FAST_ISA_NS {

void apply_rope2d(const Rope2dParams& p);
void frame_keep_mask(const FrameKeepParams& p);
void keep_compaction(const KeepCompactParams& p);
void rope2d_attention_forward(const AttentionParams& p);
void rope2d_attention_backward(const AttentionParams& p);

const KernelTable& kernel_table() {
  static const KernelTable table{&apply_rope2d, &frame_keep_mask, &keep_compaction, &rope2d_attention_forward,
                                 &rope2d_attention_backward};
  return table;
}

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS
