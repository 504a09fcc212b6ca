// Host-side entry points of the CUDA kernels.  Plain C++ (no CUDA headers), so csrc/bindings/
// is compiled by the host compiler; `stream` is a cudaStream_t passed as an integer from Python.
#pragma once
#include <cstdint>
#include <string>

#include "vl3fast/params.h"

namespace vl3fast::cuda {

// Number of visible devices, or -1 with `error` set when the driver/runtime cannot be used.
int device_count(std::string& error);
int runtime_version();
// Real architectures compiled into the module, e.g. "80;90a" (from CMAKE_CUDA_ARCHITECTURES).
const char* compiled_archs();

void rope2d_position_ids(const PositionIdsParams& p, int device, uintptr_t stream);
void apply_rope2d(const Rope2dParams& p, int device, uintptr_t stream);
void frame_keep_mask(const FrameKeepParams& p, int device, uintptr_t stream);
// Device workspace keep_compaction needs for M merged tokens (scan inputs/outputs + CUB temp storage).
uint64_t keep_compaction_workspace_bytes(int64_t num_tokens, int device);
void keep_compaction(const KeepCompactParams& p, int device, uintptr_t stream);
// Tensor-core rope2d attention (attention*.cu; tiles and workspace layout in vl3fast/attention_tc.h).
// max_seqlen < 0: unknown (the grid is bounded from T and S).  No host sync.
void rope2d_attention_forward(const AttentionParams& p, int64_t max_seqlen, int device, uintptr_t stream);
void rope2d_attention_backward(const AttentionParams& p, int64_t max_seqlen, int device, uintptr_t stream);

}  // namespace vl3fast::cuda
