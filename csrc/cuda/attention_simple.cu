// The simple CUDA rope2d attention: fp32 everywhere, runtime head dim, written for obviousness (reasons and
// sizes: vl3fast/attention_simple.h).  It serves float32 and the head dims the tensor-core kernel lacks, and
// it is the tensor-core kernel's on-GPU cross-check (benchmarks/gpu/smoke.py).
//
// Math, as the CPU kernel (csrc/cpu/kernels/attention.cpp): q~ = scale * R q and k~ = R k in fp32 (R from
// the cos/sin table of the pre-pass); S = q~ k~^T; online softmax in base e; out = O / l; lse = m + log l.
// Backward: P = exp(S - lse), dP = dO V^T, dS = P (dP - delta) (a segment of <= 16 tokens: P and delta from
// its one tile, probabilities_and_grads); dV = P^T dO, dK = R^T (dS^T q~) in the dK/dV
// pass (one CTA per 16 keys), dQ = scale R^T (dS k~) in the dQ pass (one CTA per 16 queries): every CTA
// owns the rows it writes, so there are no atomics and the result is deterministic.
// Each thread owns the accumulator elements e = tid + n * kThreads of a [16 x D] tile (kOwned registers).
//
// Compiles, unverified on a GPU (no device was available when written): see benchmarks/gpu/validate.sh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention_common.cuh"
#include "attention_prepass.cuh"
#include "check.cuh"
#include "convert.cuh"
#include "vl3fast/attention_simple.h"
#include "vl3fast/rope_math.h"

namespace vl3fast::cuda {
namespace {

using namespace attn_simple;
using attn_tc::decode_work_item;
using attn_tc::tile_count;
using attn_tc::WorkItem;

// tile[16 x D] (fp32) = rows [t0, t0 + n) of head h of x, rotated by the table and times `mult` when
// `rotate`; rows >= n are zero.
template <typename T>
__device__ void load_tile(float* tile, const void* x_, int64_t stride_token, int64_t stride_head, int h, int64_t t0,
                          int n, bool rotate, float mult, const AttnDevArgs& a) {
  const T* x = static_cast<const T*>(x_);
  const int D = a.p.head_dim, half = D / 2;
  for (int i = threadIdx.x; i < kBlock * half; i += kThreads) {
    const int r = i / half, j = i % half;
    float lo = 0.f, hi = 0.f;
    if (r < n) {
      const T* row = x + (t0 + r) * stride_token + h * stride_head;
      const float u = to_float(row[j]), v = to_float(row[j + half]);
      if (rotate) {
        const float2 cs = a.cos_sin[(t0 + r) * half + j];
        lo = mult * (u * cs.x - v * cs.y);
        hi = mult * (v * cs.x + u * cs.y);
      } else {
        lo = u;
        hi = v;
      }
    }
    tile[r * D + j] = lo;
    tile[r * D + j + half] = hi;
  }
}

// Summed in blocks of 16 terms, each from zero, then added: one serial chain over a head dim of 256 has ~3x
// the rounding error (the CPU kernel's GEMM does the same, csrc/cpu/vec_math.h kGemmKBlock).
__device__ float dot(const float* x, const float* y, int n) {
  float acc = 0.f;
  for (int d0 = 0; d0 < n; d0 += 16) {
    float block = 0.f;
    const int end = d0 + 16 < n ? d0 + 16 : n;
    for (int d = d0; d < end; ++d) block += x[d] * y[d];
    acc += block;
  }
  return acc;
}

// Writes rows < n of tile (fp32 [16 x D]) to rows [t0, t0 + n) of head h of x, rotated back (R^T) times mult.
template <typename T>
__device__ void store_rotated_back(void* x_, int64_t stride_token, int64_t stride_head, int h, int64_t t0, int n,
                                   float mult, const float* tile, const AttnDevArgs& a) {
  T* x = static_cast<T*>(x_);
  const int D = a.p.head_dim, half = D / 2;
  for (int i = threadIdx.x; i < n * half; i += kThreads) {
    const int r = i / half, j = i % half;
    const float u = tile[r * D + j], v = tile[r * D + j + half];
    const float2 cs = a.cos_sin[(t0 + r) * half + j];
    T* row = x + (t0 + r) * stride_token + h * stride_head;
    row[j] = from_float<T>(mult * (u * cs.x + v * cs.y));
    row[j + half] = from_float<T>(mult * (v * cs.x - u * cs.y));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) simple_fwd_kernel(const AttnDevArgs a) {
  const AttentionParams& p = a.p;
  if (bad_cu_seqlens(a)) {
    fill_nan_thd(static_cast<T*>(p.out), p.out_stride_token, p.out_stride_head, p);
    fill_nan_lse(p);
    return;
  }
  const int D = p.head_dim, h = blockIdx.y, tid = threadIdx.x;
  extern __shared__ float smem[];
  float* q_s = smem;               // [16 x D] scale * R q
  float* k_s = q_s + kBlock * D;   // [16 x D] R k
  float* v_s = k_s + kBlock * D;   // [16 x D]
  float* s_s = v_s + kBlock * D;   // [16 x 16] scores, then probabilities
  float* m_s = s_s + kBlock * kBlock;
  float* l_s = m_s + kBlock;
  float* alpha_s = l_s + kBlock;

  for (int w = blockIdx.x;; w += gridDim.x) {  // int32: block_start is int32
    const WorkItem it = decode_work_item(a.block_start, p.cu_seqlens, p.num_segments, p.num_tokens, kBlock, w);
    if (it.segment < 0) return;
    __syncthreads();  // the previous work item's tiles are consumed
    load_tile<T>(q_s, p.q, p.q_stride_token, p.q_stride_head, h, it.row_begin, it.rows, true, p.scale, a);
    if (tid < kBlock) {
      m_s[tid] = -INFINITY;
      l_s[tid] = 0.f;
    }
    float o[kOwned];
#pragma unroll
    for (int n = 0; n < kOwned; ++n) o[n] = 0.f;

    for (int64_t k0 = 0; k0 < it.seg_length; k0 += kBlock) {
      const int nk = tile_count(it.seg_length, k0, kBlock);
      __syncthreads();  // k_s, v_s, s_s of the previous key tile are consumed
      load_tile<T>(k_s, p.k, p.k_stride_token, p.k_stride_head, h, it.seg_begin + k0, nk, true, 1.f, a);
      load_tile<T>(v_s, p.v, p.v_stride_token, p.v_stride_head, h, it.seg_begin + k0, nk, false, 1.f, a);
      __syncthreads();
      for (int e = tid; e < kBlock * kBlock; e += kThreads) {
        const int i = e / kBlock, j = e % kBlock;
        s_s[e] = j < nk ? dot(q_s + i * D, k_s + j * D, D) : -INFINITY;
      }
      __syncthreads();
      if (tid < kBlock) {  // online softmax of row tid
        float* row = s_s + tid * kBlock;
        float mx = m_s[tid];
        for (int j = 0; j < kBlock; ++j) mx = fmaxf(mx, row[j]);
        const float alpha = expf(m_s[tid] - mx);  // m starts at -inf: alpha = 0
        float sum = 0.f;
        for (int j = 0; j < kBlock; ++j) {
          row[j] = expf(row[j] - mx);
          sum += row[j];
        }
        l_s[tid] = l_s[tid] * alpha + sum;
        m_s[tid] = mx;
        alpha_s[tid] = alpha;
      }
      __syncthreads();
#pragma unroll
      for (int n = 0; n < kOwned; ++n) {
        const int e = tid + n * kThreads;
        if (e < kBlock * D) {
          const int i = e / D, d = e % D;
          float acc = o[n] * alpha_s[i];
          for (int j = 0; j < nk; ++j) acc += s_s[i * kBlock + j] * v_s[j * D + d];
          o[n] = acc;
        }
      }
    }
    T* out = static_cast<T*>(p.out);
#pragma unroll
    for (int n = 0; n < kOwned; ++n) {
      const int e = tid + n * kThreads;
      const int i = e / D, d = e % D;
      if (e < kBlock * D && i < it.rows)
        out[(it.row_begin + i) * p.out_stride_token + h * p.out_stride_head + d] = from_float<T>(o[n] / l_s[i]);
    }
    if (tid < it.rows) p.lse[h * p.num_tokens + it.row_begin + tid] = m_s[tid] + logf(l_s[tid]);
  }
}

// P and dS of the query tile (rows < nq) against the key tile (columns < nk); zero elsewhere.  Called by
// every thread of the CTA.  When the tile holds every key of its rows (`whole_rows`: a segment of <= 16
// tokens), the softmax is recomputed from the tile, P = exp(S - rowmax) / rowsum, and delta = rowsum(P dP)
// is taken from the same tile, in fp64 (one thread per row, <= 16 terms), as the CPU kernel does for short
// segments (csrc/cpu/attention_kernel.h softmax_grad, backward_tiny_segment): there dP - delta is a small
// difference of nearly equal terms, and rowsum(dO * O) or exp(S - lse) carry the forward's independent
// rounding (2-9x torch's dq/dk error on 2-3 token segments, measured on the CPU kernel).
__device__ void probabilities_and_grads(const float* q_s, const float* do_s, const float* k_s, const float* v_s,
                                        const float* lse_s, const float* delta_s, int nq, int nk, int D, bool whole_rows,
                                        float* p_s, float* ds_s) {
  for (int e = threadIdx.x; e < kBlock * kBlock; e += kThreads) {
    const int i = e / kBlock, j = e % kBlock;
    float pr = 0.f, ds = 0.f;
    if (i < nq && j < nk) {
      const float sij = dot(q_s + i * D, k_s + j * D, D), dpij = dot(do_s + i * D, v_s + j * D, D);
      if (whole_rows) {
        pr = sij;
        ds = dpij;
      } else {
        pr = expf(sij - lse_s[i]);
        ds = pr * (dpij - delta_s[i]);
      }
    }
    p_s[e] = pr;
    ds_s[e] = ds;
  }
  if (!whole_rows) return;
  __syncthreads();
  if (threadIdx.x < nq) {
    float* pi = p_s + threadIdx.x * kBlock;
    float* dsi = ds_s + threadIdx.x * kBlock;
    double mx = pi[0], sum = 0.0, delta = 0.0, e[kBlock];
    for (int j = 1; j < nk; ++j) mx = pi[j] > mx ? pi[j] : mx;
    for (int j = 0; j < nk; ++j) sum += (e[j] = exp(pi[j] - mx));
    for (int j = 0; j < nk; ++j) delta += (e[j] /= sum) * dsi[j];
    for (int j = 0; j < nk; ++j) {
      pi[j] = static_cast<float>(e[j]);
      dsi[j] = static_cast<float>(e[j] * (dsi[j] - delta));
    }
  }
}

__device__ void load_stats(float* lse_s, float* delta_s, const AttnDevArgs& a, int h, int64_t t0, int n) {
  if (threadIdx.x < kBlock) {
    const int i = threadIdx.x;
    const int64_t at = h * a.p.num_tokens + t0 + i;
    lse_s[i] = i < n ? a.p.lse[at] : INFINITY;
    delta_s[i] = i < n ? a.delta[at] : 0.f;
  }
}

// The shared memory of both backward passes (bwd_smem_bytes), carved the same way: fp32 [16 x D] tiles of
// k, v, q and dout, the [16 x 16] P and dS tiles ([query][key]), then lse and delta of the 16 queries.
struct BwdTiles {
  float *k, *v, *q, *dout, *p, *ds, *lse, *delta;
  __device__ BwdTiles(float* smem, int D)
      : k(smem), v(k + kBlock * D), q(v + kBlock * D), dout(q + kBlock * D), p(dout + kBlock * D),
        ds(p + kBlock * kBlock), lse(ds + kBlock * kBlock), delta(lse + kBlock) {}
};

// dK and dV, one CTA per (16-key block, head), walking the segment's query tiles.
template <typename T>
__global__ void __launch_bounds__(kThreads) simple_dkdv_kernel(const AttnDevArgs a) {
  const AttentionParams& p = a.p;
  if (bad_cu_seqlens(a)) {
    fill_nan_thd(static_cast<T*>(p.dk), p.dk_stride_token, p.dk_stride_head, p);
    fill_nan_thd(static_cast<T*>(p.dv), p.dv_stride_token, p.dv_stride_head, p);
    return;
  }
  const int D = p.head_dim, h = blockIdx.y, tid = threadIdx.x;
  extern __shared__ float smem[];
  const BwdTiles tiles(smem, D);
  float *k_s = tiles.k, *v_s = tiles.v, *q_s = tiles.q, *do_s = tiles.dout, *p_s = tiles.p, *ds_s = tiles.ds,
        *lse_s = tiles.lse, *delta_s = tiles.delta;

  for (int w = blockIdx.x;; w += gridDim.x) {  // int32: block_start is int32
    const WorkItem it = decode_work_item(a.block_start, p.cu_seqlens, p.num_segments, p.num_tokens, kBlock, w);
    if (it.segment < 0) return;
    const int nk = it.rows;
    __syncthreads();
    load_tile<T>(k_s, p.k, p.k_stride_token, p.k_stride_head, h, it.row_begin, nk, true, 1.f, a);
    load_tile<T>(v_s, p.v, p.v_stride_token, p.v_stride_head, h, it.row_begin, nk, false, 1.f, a);
    float dk[kOwned], dv[kOwned];
#pragma unroll
    for (int n = 0; n < kOwned; ++n) dk[n] = dv[n] = 0.f;
    for (int64_t q0 = 0; q0 < it.seg_length; q0 += kBlock) {
      const int nq = tile_count(it.seg_length, q0, kBlock);
      __syncthreads();
      load_tile<T>(q_s, p.q, p.q_stride_token, p.q_stride_head, h, it.seg_begin + q0, nq, true, p.scale, a);
      load_tile<T>(do_s, p.dout, p.dout_stride_token, p.dout_stride_head, h, it.seg_begin + q0, nq, false, 1.f, a);
      load_stats(lse_s, delta_s, a, h, it.seg_begin + q0, nq);
      __syncthreads();
      probabilities_and_grads(q_s, do_s, k_s, v_s, lse_s, delta_s, nq, nk, D, it.seg_length <= kBlock, p_s, ds_s);
      __syncthreads();
#pragma unroll
      for (int n = 0; n < kOwned; ++n) {
        const int e = tid + n * kThreads;
        if (e < kBlock * D) {
          const int j = e / D, d = e % D;  // key, channel
          float accv = dv[n], acck = dk[n];
          for (int i = 0; i < nq; ++i) {
            accv += p_s[i * kBlock + j] * do_s[i * D + d];
            acck += ds_s[i * kBlock + j] * q_s[i * D + d];
          }
          dv[n] = accv;
          dk[n] = acck;
        }
      }
    }
    __syncthreads();  // k_s is reused for dK staging
    T* dv_g = static_cast<T*>(p.dv);
#pragma unroll
    for (int n = 0; n < kOwned; ++n) {
      const int e = tid + n * kThreads;
      const int j = e / D, d = e % D;
      if (e < kBlock * D) {
        k_s[e] = dk[n];
        if (j < nk) dv_g[(it.row_begin + j) * p.dv_stride_token + h * p.dv_stride_head + d] = from_float<T>(dv[n]);
      }
    }
    __syncthreads();
    store_rotated_back<T>(p.dk, p.dk_stride_token, p.dk_stride_head, h, it.row_begin, nk, 1.f, k_s, a);
  }
}

// dQ, one CTA per (16-query block, head), walking the segment's key tiles.
template <typename T>
__global__ void __launch_bounds__(kThreads) simple_dq_kernel(const AttnDevArgs a) {
  const AttentionParams& p = a.p;
  if (bad_cu_seqlens(a)) {
    fill_nan_thd(static_cast<T*>(p.dq), p.dq_stride_token, p.dq_stride_head, p);
    return;
  }
  const int D = p.head_dim, h = blockIdx.y, tid = threadIdx.x;
  extern __shared__ float smem[];
  const BwdTiles tiles(smem, D);
  float *k_s = tiles.k, *v_s = tiles.v, *q_s = tiles.q, *do_s = tiles.dout, *p_s = tiles.p, *ds_s = tiles.ds,
        *lse_s = tiles.lse, *delta_s = tiles.delta;

  for (int w = blockIdx.x;; w += gridDim.x) {  // int32: block_start is int32
    const WorkItem it = decode_work_item(a.block_start, p.cu_seqlens, p.num_segments, p.num_tokens, kBlock, w);
    if (it.segment < 0) return;
    const int nq = it.rows;
    __syncthreads();
    load_tile<T>(q_s, p.q, p.q_stride_token, p.q_stride_head, h, it.row_begin, nq, true, p.scale, a);
    load_tile<T>(do_s, p.dout, p.dout_stride_token, p.dout_stride_head, h, it.row_begin, nq, false, 1.f, a);
    load_stats(lse_s, delta_s, a, h, it.row_begin, nq);
    float dq[kOwned];
#pragma unroll
    for (int n = 0; n < kOwned; ++n) dq[n] = 0.f;
    for (int64_t k0 = 0; k0 < it.seg_length; k0 += kBlock) {
      const int nk = tile_count(it.seg_length, k0, kBlock);
      __syncthreads();
      load_tile<T>(k_s, p.k, p.k_stride_token, p.k_stride_head, h, it.seg_begin + k0, nk, true, 1.f, a);
      load_tile<T>(v_s, p.v, p.v_stride_token, p.v_stride_head, h, it.seg_begin + k0, nk, false, 1.f, a);
      __syncthreads();
      probabilities_and_grads(q_s, do_s, k_s, v_s, lse_s, delta_s, nq, nk, D, it.seg_length <= kBlock, p_s, ds_s);
      __syncthreads();
#pragma unroll
      for (int n = 0; n < kOwned; ++n) {
        const int e = tid + n * kThreads;
        if (e < kBlock * D) {
          const int i = e / D, d = e % D;  // query, channel
          float acc = dq[n];
          for (int j = 0; j < nk; ++j) acc += ds_s[i * kBlock + j] * k_s[j * D + d];
          dq[n] = acc;
        }
      }
    }
    __syncthreads();  // q_s is reused for dQ staging
#pragma unroll
    for (int n = 0; n < kOwned; ++n) {
      const int e = tid + n * kThreads;
      if (e < kBlock * D) q_s[e] = dq[n];
    }
    __syncthreads();
    store_rotated_back<T>(p.dq, p.dq_stride_token, p.dq_stride_head, h, it.row_begin, nq, p.scale, q_s, a);
  }
}

// cos/sin of every token's D/2 pair angles (the simple kernel's table; the tensor-core pre-pass fuses it).
__global__ void rope_table_kernel(const AttnDevArgs a) {
  const AttentionParams& p = a.p;
  const int half = p.head_dim / 2;
  const int64_t total = p.num_tokens * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int64_t t = i / half;
    const int j = static_cast<int>(i % half);
    float s, c;
    sincosf(rope2d_angle(j, p.head_dim / 4, p.pos_hw[2 * t], p.pos_hw[2 * t + 1], p.inv_freq), &s, &c);
    a.cos_sin[i] = make_float2(c, s);
  }
}

void check_head_dim(const AttentionParams& p) {
  if (!head_dim_supported(p.head_dim))
    throw std::invalid_argument("rope2d_attention (CUDA simple kernel): head dim " + std::to_string(p.head_dim) +
                                " is not a supported rope2d head dim (vl3fast/rope_math.h)");
}

}  // namespace

// The whole call, its dtype dispatched once: the pre-passes (block table + checks, cos/sin table, delta for
// the backward), then the forward kernel or the dK/dV and dQ passes.
void attention_simple_call(const AttnDevArgs& a, int64_t max_seqlen, bool backward, cudaStream_t s) {
  check_head_dim(a.p);
  const AttentionParams& p = a.p;
  VL3FAST_DISPATCH_FLOATING(p.dtype, float, __nv_bfloat16, __half,
                            backward ? "rope2d_attention_backward" : "rope2d_attention", [&] {
    begin_call<scalar_t>(a, kBlock, max_seqlen, backward, s);
    rope_table_kernel<<<grid_for(p.num_tokens * (p.head_dim / 2), 256), 256, 0, s>>>(a);
    check_launch("rope_table_kernel", s);
    const int64_t grid_x = attn_tc::launch_grid_x(p.num_tokens, p.num_segments, kBlock, max_seqlen);
    if (!backward) {
      launch_main(simple_fwd_kernel<scalar_t>, "simple_fwd_kernel", a, fwd_smem_bytes(p.head_dim), grid_x, kThreads, s);
      return;
    }
    launch_delta<scalar_t>(a, s);
    const int smem = bwd_smem_bytes(p.head_dim);
    launch_main(simple_dkdv_kernel<scalar_t>, "simple_dkdv_kernel", a, smem, grid_x, kThreads, s);
    launch_main(simple_dq_kernel<scalar_t>, "simple_dq_kernel", a, smem, grid_x, kThreads, s);
  });
}

}  // namespace vl3fast::cuda
