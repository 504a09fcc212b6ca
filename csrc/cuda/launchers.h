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
// rope2d attention (attention*.cu): the tensor-core kernel (vl3fast/attention_tc.h: bf16/fp16 and its head
// dims) or the simple kernel (vl3fast/attention_simple.h: any dtype and head dim); Python's dispatch table
// (vl3fast/ops/attention.py) picks.  max_seqlen < 0: unknown; it only sizes the grid.  No host sync
// unless VL3FAST_CUDA_DEBUG is set (check.cuh).
enum class AttentionKernel { kTensorCore, kSimple };
void rope2d_attention_forward(const AttentionParams& p, int64_t max_seqlen, AttentionKernel kernel, int device,
                              uintptr_t stream);
void rope2d_attention_backward(const AttentionParams& p, int64_t max_seqlen, AttentionKernel kernel, int device,
                               uintptr_t stream);
// Test only: the tensor-core kernel's pre-passes alone (block table + checks, cos/sin, rotated k and q,
// delta, cleared dq accumulator), outputs left in the workspace (vl3fast/ops/_attention_stages.py).
void rope2d_attention_prepass(const AttentionParams& p, int64_t max_seqlen, bool backward, int device,
                              uintptr_t stream);

}  // namespace vl3fast::cuda
