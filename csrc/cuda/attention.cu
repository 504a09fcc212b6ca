// Host entry points of the CUDA rope2d attention (no host sync anywhere) and the one untyped helper kernel:
//   block_table_kernel  cu_seqlens -> block_start[S + 1] (one CTA scan; the main kernels binary-search it),
//                       which also checks cu_seqlens and the max_seqlen hint on the device (status word)
// An entry point resolves the workspace regions of the kernel Python named (ops/attention.py: kernel_for)
// and calls that kernel's call body (attention_fwd.cu, attention_bwd.cu, attention_simple.cu), which
// dispatches (dtype, head dim) once and runs the typed pre-passes (attention_prepass.cuh) and main kernels.
// Compiles, unverified on a GPU.
#include "attention_common.cuh"
#include "attention_prepass.cuh"
#include "check.cuh"
#include "launchers.h"
#include "vl3fast/attention_simple.h"

namespace vl3fast::cuda {
namespace {

using namespace attn_tc;

__global__ void __launch_bounds__(kScanThreads) block_table_kernel(const int32_t* cu_seqlens, int64_t num_segments,
                                                                    int64_t num_tokens, int block, int64_t max_seqlen,
                                                                    int32_t* block_start, int32_t* status) {
  __shared__ int32_t warp_totals[kScanThreads / 32];
  __shared__ int32_t carry;
  __shared__ int32_t flags;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  if (tid == 0) {
    carry = 0;
    flags = num_segments > 0 ? 0 : no_segment_status(cu_seqlens, num_tokens);
    block_start[0] = 0;
  }
  __syncthreads();
  for (int64_t base = 0; base < num_segments; base += kScanThreads) {
    const int64_t s = base + tid;
    int32_t v = 0;
    if (s < num_segments) {
      v = static_cast<int32_t>(segment_blocks(cu_seqlens, s, num_tokens, block));
      const int32_t st = segment_status(cu_seqlens, s, num_segments, num_tokens, max_seqlen);
      if (st) atomicOr(&flags, st);
    }
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const int32_t n = __shfl_up_sync(0xffffffffu, v, o);
      if (lane >= o) v += n;
    }
    if (lane == 31) warp_totals[warp] = v;
    __syncthreads();
    if (warp == 0) {
      int32_t w = warp_totals[lane];
#pragma unroll
      for (int o = 1; o < 32; o *= 2) {
        const int32_t n = __shfl_up_sync(0xffffffffu, w, o);
        if (lane >= o) w += n;
      }
      warp_totals[lane] = w;  // inclusive over warps
    }
    __syncthreads();
    const int32_t incl = carry + v + (warp > 0 ? warp_totals[warp - 1] : 0);
    if (s < num_segments) block_start[s + 1] = incl;
    __syncthreads();
    if (tid == kScanThreads - 1) carry = incl;
    __syncthreads();
  }
  // A malformed cu_seqlens: no work items; the main kernels write NaN instead (attention_common.cuh).
  if (tid == 0) {
    *status = flags;
    if (flags & kStatusBadCuSeqlens) block_start[num_segments] = 0;
  }
}

void check_workspace(const AttentionParams& p, int64_t needed) {
  if (p.workspace_bytes < needed)
    throw std::invalid_argument("rope2d_attention: CUDA workspace too small (" + std::to_string(p.workspace_bytes) +
                                " < " + std::to_string(needed) + " bytes)");
}

// The regions both kernels' workspaces start with (attn_tc::WorkspaceHead), after the size check.
AttnDevArgs head_dev_args(const AttentionParams& p, const attn_tc::WorkspaceHead& w, int64_t total) {
  check_workspace(p, total);
  auto* base = static_cast<unsigned char*>(p.workspace);
  AttnDevArgs a;
  a.p = p;
  a.status = reinterpret_cast<int32_t*>(base + w.status);
  a.block_start = reinterpret_cast<const int32_t*>(base + w.block_start);
  a.cos_sin = reinterpret_cast<float2*>(base + w.cos_sin);
  return a;
}

AttnDevArgs tc_dev_args(const AttentionParams& p, bool backward) {
  const attn_tc::Workspace w = attn_tc::workspace_layout(p.num_tokens, p.num_segments, p.num_heads, p.head_dim,
                                                         backward);
  AttnDevArgs a = head_dev_args(p, w, w.total);
  auto* base = static_cast<unsigned char*>(p.workspace);
  a.k_rot = base + w.k_rot;
  if (backward) {
    a.q_rot = base + w.q_rot;
    a.delta = reinterpret_cast<float*>(base + w.delta);
    a.dq_accum = reinterpret_cast<float*>(base + w.dq_accum);
  }
  return a;
}

AttnDevArgs simple_dev_args(const AttentionParams& p, bool backward) {
  const attn_simple::Workspace w =
      attn_simple::workspace_layout(p.num_tokens, p.num_segments, p.num_heads, p.head_dim, backward);
  AttnDevArgs a = head_dev_args(p, w, w.total);
  if (backward) a.delta = reinterpret_cast<float*>(static_cast<unsigned char*>(p.workspace) + w.delta);
  return a;
}

}  // namespace

// Checked mode: the device-side input checks of the scan, raised as a ValueError naming the argument.
void raise_on_status(const AttnDevArgs& a, int64_t max_seqlen, cudaStream_t s) {
  int32_t status = 0;
  check_cuda(cudaMemcpyAsync(&status, a.status, sizeof(status), cudaMemcpyDeviceToHost, s),
             "VL3FAST_CUDA_DEBUG status read");
  check_cuda(cudaStreamSynchronize(s), "VL3FAST_CUDA_DEBUG status read");
  if (status & attn_tc::kStatusBadCuSeqlens)
    throw std::invalid_argument("cu_seqlens: inconsistent (checked on the device: it must start at 0, be "
                                "non-decreasing and end at T = " + std::to_string(a.p.num_tokens) +
                                "); without VL3FAST_CUDA_DEBUG every output is NaN");
  if (status & attn_tc::kStatusMaxSeqlenTooSmall)
    throw std::invalid_argument("max_seqlen: the hint " + std::to_string(max_seqlen) +
                                " is below the longest segment of cu_seqlens (checked on the device; without "
                                "VL3FAST_CUDA_DEBUG the results are still right, only the grid is smaller)");
}

// The block table (one CTA scan), whose status word also carries the device-side input checks.
void launch_block_table(const AttnDevArgs& a, int block, int64_t max_seqlen, cudaStream_t s) {
  const AttentionParams& p = a.p;
  block_table_kernel<<<1, attn_tc::kScanThreads, 0, s>>>(p.cu_seqlens, p.num_segments, p.num_tokens, block, max_seqlen,
                                                const_cast<int32_t*>(a.block_start), a.status);
  check_launch("block_table_kernel", s);
}

void rope2d_attention_forward(const AttentionParams& p, int64_t max_seqlen, AttentionKernel kernel, int device,
                              uintptr_t stream) {
  DeviceGuard guard(device);
  auto* s = reinterpret_cast<cudaStream_t>(stream);
  if (kernel == AttentionKernel::kSimple) return attention_simple_call(simple_dev_args(p, false), max_seqlen, false, s);
  attention_tc_forward(tc_dev_args(p, false), max_seqlen, s);
}

void rope2d_attention_backward(const AttentionParams& p, int64_t max_seqlen, AttentionKernel kernel, int device,
                               uintptr_t stream) {
  DeviceGuard guard(device);
  auto* s = reinterpret_cast<cudaStream_t>(stream);
  if (kernel == AttentionKernel::kSimple) return attention_simple_call(simple_dev_args(p, true), max_seqlen, true, s);
  attention_tc_backward(tc_dev_args(p, true), max_seqlen, s);
}

void rope2d_attention_prepass(const AttentionParams& p, int64_t max_seqlen, bool backward, int device,
                              uintptr_t stream) {
  DeviceGuard guard(device);
  auto* s = reinterpret_cast<cudaStream_t>(stream);
  const AttnDevArgs a = tc_dev_args(p, backward);
  attn_tc_dispatch(p.dtype, p.head_dim, "_attn_tc_prepass", [&](auto tag, auto dim) {
    tc_prepass<typename decltype(tag)::type, decltype(dim)::value>(a, max_seqlen, backward, s);
  });
}

}  // namespace vl3fast::cuda
