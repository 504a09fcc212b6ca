// Differential Frame Pruner on the GPU.  Compiles for sm_80/sm_90a; unverified on a GPU so far
// ("compiles, unverified": see benchmarks/gpu/validate.sh, DESIGN.md §7).
//
// frame_keep_mask: one pass.  A warp owns one spatial merged token of one video and walks it through
// time; each thread holds the cascade accumulators of one or two of the 4*V streams of torch's CPU
// summation order (pruning.h), so the GPU's float32 d is bit-identical to torch's CPU mean (and to
// this package's CPU kernel).  Consecutive lanes read consecutive floats (coalesced); the previous
// frame's run was read one step earlier by the same warp, so it comes from L1/L2.  A second small
// kernel (one block per frame) applies min_tokens.
// keep_compaction: one int64 per token packs (kept, kept * m*m) so a single CUB device-wide
// exclusive scan yields both the merged-token and the patch output positions; a scatter kernel
// writes indices, positions, -1 padding and per-frame cu_seqlens read off the scan.  No host sync.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>
#include <cub/device/device_scan.cuh>

#include "check.cuh"
#include "convert.cuh"
#include "launchers.h"
#include "vl3fast/pruning.h"

namespace vl3fast::cuda {
namespace {

template <typename T>
__device__ __forceinline__ float abs_diff(const T* a, const T* b, int64_t e) {
  return fabsf(to_float(a[e]) - to_float(b[e]));
}

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxStreams = 4 * 8;

// sum_k |a[k] - b[k]| in torch's CPU order with V lanes; the result is valid in lane 0.
// Stream s = k*V + l (k: ilp stream, l: lane) reads element 4*i*V + s of ilp row i.
template <int V, typename T>
__device__ float warp_torch_order_sum(const T* a, const T* b, int64_t K, const TorchSumOrder& o, float* partial) {
  constexpr int S = 4 * V;
  constexpr int Q = (S + 31) / 32;
  const int lane = threadIdx.x & 31;
  float acc[Q][4];
#pragma unroll
  for (int q = 0; q < Q; ++q)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[q][j] = 0.0f;
  int64_t i = 0;
  while (i + o.step <= o.nilp) {
    for (const int64_t end = i + o.step; i < end; ++i)
#pragma unroll
      for (int q = 0; q < Q; ++q) {
        const int s = lane + 32 * q;
        if (s < S) acc[q][0] += abs_diff(a, b, 4 * i * V + s);
      }
    const int top = cascade_top_level(i, o.level_power);
    for (int j = 1; j <= top; ++j)
#pragma unroll
      for (int q = 0; q < Q; ++q) {
        acc[q][j] += acc[q][j - 1];
        acc[q][j - 1] = 0.0f;
      }
  }
  for (; i < o.nilp; ++i)
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      const int s = lane + 32 * q;
      if (s < S) acc[q][0] += abs_diff(a, b, 4 * i * V + s);
    }
#pragma unroll
  for (int q = 0; q < Q; ++q) {
    acc[q][0] += acc[q][1];
    acc[q][0] += acc[q][2];
    acc[q][0] += acc[q][3];
  }
  for (int64_t v = 4 * o.nilp; v < o.nvec; ++v)
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      const int s = lane + 32 * q;
      if (s < V) acc[q][0] += abs_diff(a, b, v * V + s);
    }
#pragma unroll
  for (int q = 0; q < Q; ++q) {
    const int s = lane + 32 * q;
    if (s < S) partial[s] = acc[q][0];
  }
  __syncwarp();
  float total = 0.0f;
  if (lane == 0) {
    for (int64_t e = o.nvec * V; e < K; ++e) total += abs_diff(a, b, e);
    for (int l = 0; l < V; ++l) {
      float p = partial[l];
      p += partial[V + l];
      p += partial[2 * V + l];
      p += partial[3 * V + l];
      total += p;
    }
  }
  __syncwarp();
  return total;
}

template <typename T>
__global__ void frame_diff_kernel(FrameKeepParams p) {
  __shared__ float partials[kWarpsPerBlock][kMaxStreams];
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const T* pixels = static_cast<const T*>(p.pixels);
  const float thr = static_cast<float>(p.threshold);
  const float rule_diff = static_cast<float>(p.threshold + 1.0);
  for (int64_t it = blockIdx.y; it < p.num_items; it += gridDim.y) {
    const int64_t* row = p.item_table + it * kGridFields;
    const int64_t t = row[kGridT], m = row[kGridMerge], n = tokens_per_frame(row);
    const int64_t K = m * m * p.row_width;
    const int64_t frame_rows = n * m * m;
    const TorchSumOrder o = torch_sum_order(K, p.sum_lanes);
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; j < n;
         j += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
      const int64_t tok0 = row[kGridTokenOffset] + j;
      if (lane == 0) {
        // As the CPU kernel: frame 0 compares fp32(threshold + 1) > threshold (false at >= 2^24).
        p.keep[tok0] = t == 1 || rule_diff > thr;
        if (p.diff) p.diff[tok0] = rule_diff;
      }
      const T* prev = pixels + token_first_patch(row, j) * p.row_stride;
      for (int64_t f = 1; f < t; ++f) {
        const T* cur = prev + frame_rows * p.row_stride;
        float sum;
        if (o.lanes == 8) sum = warp_torch_order_sum<8>(cur, prev, K, o, partials[warp]);
        else sum = warp_torch_order_sum<1>(cur, prev, K, o, partials[warp]);
        if (lane == 0) {
          const float d = (sum / static_cast<float>(K)) * 255.0f;
          const int64_t tok = tok0 + f * n;
          p.keep[tok] = d > thr;
          if (p.diff) p.diff[tok] = d;
        }
        prev = cur;
      }
    }
  }
}

constexpr int kFrameThreads = 256;

__global__ void min_tokens_kernel(FrameKeepParams p) {
  using BlockReduce = cub::BlockReduce<int64_t, kFrameThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ int64_t kept_total;
  for (int64_t f = blockIdx.x; f < p.num_frames; f += gridDim.x) {
    const FrameSpan s = frame_span(p.item_table, p.num_items, f);
    int64_t kept = 0;
    for (int64_t i = s.begin + threadIdx.x; i < s.end; i += blockDim.x) kept += p.keep[i] ? 1 : 0;
    const int64_t total = BlockReduce(temp).Sum(kept);
    if (threadIdx.x == 0) kept_total = total;
    __syncthreads();
    if (kept_total < p.min_tokens)
      for (int64_t i = s.begin + threadIdx.x; i < s.begin + p.min_tokens && i < s.end; i += blockDim.x) p.keep[i] = true;
    __syncthreads();
  }
}

// Packed scan value of one token: low 32 bits count kept tokens, high 32 bits kept patches.
__global__ void scan_values_kernel(KeepCompactParams p, int64_t* values) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.num_tokens; i += stride) {
    const int64_t item = grid_item_of(p.item_table, p.num_items, kGridTokenOffset, i);
    const int64_t m = p.item_table[item * kGridFields + kGridMerge];
    values[i] = p.keep[i] ? (int64_t(1) | ((m * m) << 32)) : 0;
  }
}

__global__ void scatter_kernel(KeepCompactParams p, const int64_t* values, const int64_t* pos) {
  const int64_t M = p.num_tokens;
  const int64_t total = M > 0 ? pos[M - 1] + values[M - 1] : 0;
  const int64_t kept_tokens = total & 0xffffffffLL, kept_patches = total >> 32;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = first; i < M; i += stride) {
    if (!p.keep[i]) continue;
    const int64_t out = pos[i] & 0xffffffffLL;
    int64_t patch_out = pos[i] >> 32;
    p.token_index[out] = i;
    const int64_t item = grid_item_of(p.item_table, p.num_items, kGridTokenOffset, i);
    const int64_t* row = p.item_table + item * kGridFields;
    const int64_t m = row[kGridMerge], n = tokens_per_frame(row);
    const int64_t j = (i - row[kGridTokenOffset]) % n;
    const int64_t first_patch = token_first_patch(row, i - row[kGridTokenOffset]);
    for (int64_t r = 0; r < m * m; ++r, ++patch_out) {
      p.patch_index[patch_out] = first_patch + r;
      write_patch_position(j * m * m + r, row[kGridW], m, p.patch_pos_hw + 2 * patch_out);
    }
  }
  for (int64_t i = kept_tokens + first; i < M; i += stride) p.token_index[i] = -1;
  for (int64_t i = kept_patches + first; i < p.num_patches; i += stride) {
    p.patch_index[i] = -1;
    p.patch_pos_hw[2 * i] = -1;
    p.patch_pos_hw[2 * i + 1] = -1;
  }
  for (int64_t f = first; f <= p.num_frames; f += stride) {
    int64_t v = total;
    if (f < p.num_frames) v = pos[frame_span(p.item_table, p.num_items, f).begin];
    p.token_cu[f] = static_cast<int32_t>(v & 0xffffffffLL);
    p.patch_cu[f] = static_cast<int32_t>(v >> 32);
  }
  if (first == 0) {
    p.num_kept[0] = kept_tokens;
    p.num_kept[1] = kept_patches;
  }
}

constexpr uint64_t kAlign = 256;
uint64_t align_up(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

size_t scan_temp_bytes(int64_t num_tokens) {
  size_t bytes = 0;
  check_cuda(cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const int64_t*>(nullptr),
                                           static_cast<int64_t*>(nullptr), num_tokens),
             "cub::DeviceScan::ExclusiveSum (size query)");
  return bytes;
}

}  // namespace

void frame_keep_mask(const FrameKeepParams& p, int device, uintptr_t stream) {
  DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const int64_t blocks_x = (p.max_frame_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const dim3 grid(static_cast<unsigned>(blocks_x < 65535 * 16 ? (blocks_x > 0 ? blocks_x : 1) : 65535 * 16),
                  static_cast<unsigned>(p.num_items < 65535 ? p.num_items : 65535));
  switch (p.dtype) {
    case DType::kFloat32: frame_diff_kernel<float><<<grid, kWarpsPerBlock * 32, 0, s>>>(p); break;
    case DType::kBFloat16: frame_diff_kernel<__nv_bfloat16><<<grid, kWarpsPerBlock * 32, 0, s>>>(p); break;
    case DType::kFloat16: frame_diff_kernel<__half><<<grid, kWarpsPerBlock * 32, 0, s>>>(p); break;
    default: throw std::invalid_argument("frame_keep_mask: unsupported dtype (supported: float32, bfloat16, float16)");
  }
  check_launch(std::string("frame_diff_kernel<") + dtype_name(p.dtype) + ">", s);
  if (p.min_tokens > 0 && p.num_frames > 0) {
    const unsigned frames = static_cast<unsigned>(p.num_frames < 65535 ? p.num_frames : 65535);
    min_tokens_kernel<<<frames, kFrameThreads, 0, s>>>(p);
    check_launch("min_tokens_kernel", s);
  }
}

uint64_t keep_compaction_workspace_bytes(int64_t num_tokens, int device) {
  DeviceGuard guard(device);
  const uint64_t n = static_cast<uint64_t>(num_tokens > 0 ? num_tokens : 1);
  return 2 * align_up(n * sizeof(int64_t)) + align_up(scan_temp_bytes(num_tokens > 0 ? num_tokens : 1));
}

void keep_compaction(const KeepCompactParams& p, int device, uintptr_t stream) {
  DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const uint64_t n = static_cast<uint64_t>(p.num_tokens > 0 ? p.num_tokens : 1);
  char* ws = static_cast<char*>(p.workspace);
  auto* values = reinterpret_cast<int64_t*>(ws);
  auto* pos = reinterpret_cast<int64_t*>(ws + align_up(n * sizeof(int64_t)));
  void* temp = ws + 2 * align_up(n * sizeof(int64_t));
  size_t temp_bytes = p.workspace_bytes - 2 * align_up(n * sizeof(int64_t));
  constexpr int kThreads = 256;
  if (p.num_tokens > 0) {
    scan_values_kernel<<<grid_for(p.num_tokens, kThreads), kThreads, 0, s>>>(p, values);
    check_launch("scan_values_kernel", s);
    check_cuda(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, values, pos, p.num_tokens, s),
               "cub::DeviceScan::ExclusiveSum");
    check_launch("cub::DeviceScan::ExclusiveSum", s);
  }
  const int64_t work = p.num_tokens > p.num_patches ? p.num_tokens : p.num_patches;
  scatter_kernel<<<grid_for(work > p.num_frames + 1 ? work : p.num_frames + 1, kThreads), kThreads, 0, s>>>(
      p, values, pos);
  check_launch("scatter_kernel", s);
}

}  // namespace vl3fast::cuda
