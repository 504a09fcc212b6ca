// pos_hw / cu_seqlens on the GPU: one thread per token (and per frame), using the same index
// helpers as the CPU path (vl3fast/positions.h), so CPU tests cover the arithmetic.
#include "check.cuh"
#include "launchers.h"
#include "vl3fast/positions.h"

namespace vl3fast::cuda {
namespace {

__global__ void position_ids_kernel(PositionIdsParams p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.num_tokens; i += stride)
    write_token_position(p.item_table, p.num_items, i, p.pos_hw);
  for (int64_t f = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; f < p.num_frames; f += stride)
    write_frame_end(p.item_table, p.num_items, f, p.cu_seqlens);
  if (blockIdx.x == 0 && threadIdx.x == 0) p.cu_seqlens[0] = 0;
}

}  // namespace

void rope2d_position_ids(const PositionIdsParams& p, int device, uintptr_t stream) {
  DeviceGuard guard(device);
  constexpr int kThreads = 256;
  position_ids_kernel<<<grid_for(p.num_tokens, kThreads), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(p);
  check_launch("position_ids_kernel", reinterpret_cast<cudaStream_t>(stream));
}

}  // namespace vl3fast::cuda
