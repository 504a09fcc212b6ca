// Backward tensor-core kernel of rope2d attention, FA2 style (tile configuration: vl3fast/attention_tc.h).
//
// One CTA = (64-key block, head) of the hint-free grid; each warp owns 16 keys and keeps dK, dV (fp32) in registers
// while it walks the segment's query tiles (rotated q from the pre-pass, dout, lse and delta =
// rowsum(dout * out) from the delta pre-pass).  Per query tile, with all products on tensor cores:
//   S^T = K Q^T (over D_qk), P^T = exp2(S^T * scale * log2 e - lse * log2 e), dP^T = V dO^T (over D_qk;
//   V and dO pad channels are zero-filled), dS^T = P^T (dP^T - delta),
//   dV += P^T dO, dK += dS^T Q (n-tiles of 8 over exactly D), dQ += dS K into an fp32 workspace with
//   red.global.add (dS goes through shared memory to change its operand layout).
// Epilogue: dV stored; dK * scale staged in fp32 shared memory and rotated back (inverse RoPE, so it is
// the gradient of the un-rotated k).  dq is rotated back and scaled by dq_finalize_kernel (below).
//
// Compiles, unverified on a GPU (no device was available when written): see benchmarks/gpu/validate.sh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention_common.cuh"
#include "attention_prepass.cuh"
#include "check.cuh"
#include "mma.cuh"

namespace vl3fast::cuda {
namespace {

using namespace attn_tc;
using namespace tc;

// acc[NT][4] += A (16 x 16, fragments `a`) x B (16 x 8 NT), B read from shared memory stored k-major
// ([k][n], row stride `ld`): rows kk*16.., columns col0.., with ldmatrix.trans: x4 per pair of n-tiles, x2
// for an odd last one.
template <typename T, int NT>
__device__ __forceinline__ void mma_rows_times_tile(float (&acc)[NT][4], const uint32_t (&a)[4], const T* b_s, int kk,
                                                    int col0, int ld, int lane) {
#pragma unroll
  for (int np = 0; np < NT / 2; ++np) {
    uint32_t b[4];
    ldsm_x4_t(b, b_s + bwd_rows_frag(kk, col0, np, lane, ld));
    mma<T>(acc[2 * np], a, b[0], b[1]);
    mma<T>(acc[2 * np + 1], a, b[2], b[3]);
  }
  if constexpr (NT % 2 == 1) {
    uint32_t b[2];
    ldsm_x2_t(b, b_s + bwd_rows_frag_last(kk, col0, NT, lane, ld));
    mma<T>(acc[NT - 1], a, b[0], b[1]);
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attn_bwd_kernel(const AttnDevArgs a) {
  constexpr int DQ = qk_dim(D);
  constexpr int SQ = row_stride(DQ);
  constexpr int BQ = bwd_block_q(D);
  constexpr int SS = row_stride(BQ);
  constexpr int KS = DQ / 16;
  constexpr int NTD = D / 8;
  constexpr int NTQ = BQ / 8;
  constexpr int HALF = D / 2;
  constexpr int MT = BQ / 16;          // m-tiles of the dQ product
  constexpr int G = kWarps / MT;       // warps sharing one m-tile (split over n-tiles)
  constexpr int NTG = NTD / G;
  constexpr float kLog2e = 1.4426950408889634f;
  static_assert(kWarps % MT == 0 && NTD % G == 0 && NTQ % 2 == 0, "tile shapes");
  static_assert(kBlockN * D * 4 <= 2 * kBlockN * SQ * 2, "fp32 dK staging must fit in the K and V tiles");

  const AttentionParams& p = a.p;
  const int64_t num_tokens = p.num_tokens;
  // A malformed cu_seqlens leaves no work item (the scan zeroes the count); dq_finalize_kernel then writes
  // NaN to dq, dk and dv (kept out of this kernel: the D = 128 instantiation is at the register limit).
  // One work item per CTA: the backward's grid is always the hint-free bound (attention.cu), which covers
  // every block of a well-formed cu_seqlens.  (A grid-stride loop here costs the D = 128 instantiation,
  // at the 255-register limit, 8 bytes of spills.)
  const WorkItem it = decode_work_item(a.block_start, p.cu_seqlens, p.num_segments, num_tokens, kBlockN, blockIdx.x);
  if (it.segment < 0) return;  // idle CTA of the upper-bound grid
  const int h = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr BwdSmem L = bwd_smem(D);
  T* k_s = reinterpret_cast<T*>(smem_raw) + L.k0;
  T* v_s = reinterpret_cast<T*>(smem_raw) + L.v0;
  T* q_s = reinterpret_cast<T*>(smem_raw) + L.q0;
  T* do_s = reinterpret_cast<T*>(smem_raw) + L.do0;
  T* ds_s = reinterpret_cast<T*>(smem_raw) + L.ds0;  // dS^T [key][query]
  float* lse_s = reinterpret_cast<float*>(smem_raw + L.stats_byte);
  float* delta_s = lse_s + BQ;

  const int nk = it.rows;
  {
    const T* k_rot = static_cast<const T*>(a.k_rot) + (h * num_tokens + it.row_begin) * DQ;
    const T* v_g = static_cast<const T*>(p.v) + it.row_begin * p.v_stride_token + h * p.v_stride_head;
    constexpr int KC = DQ / 8;
    for (int i = tid; i < kBlockN * KC; i += kThreads) {
      const int r = i / KC, c = i % KC;
      const bool ok = r < nk;
      cp_async16(k_s + chunk_offset(r, c, SQ), k_rot + static_cast<int64_t>(ok ? r : 0) * DQ + c * 8, ok);
      const bool vok = ok && c < D / 8;
      cp_async16(v_s + chunk_offset(r, c, SQ),
                 v_g + static_cast<int64_t>(ok ? r : 0) * p.v_stride_token + (vok ? c * 8 : 0), vok);
    }
    cp_async_commit();
  }

  float dv[NTD][4], dk[NTD][4];
#pragma unroll
  for (int t = 0; t < NTD; ++t)
#pragma unroll
    for (int i = 0; i < 4; ++i) dv[t][i] = dk[t][i] = 0.f;
  const bool key_ok0 = warp * 16 + frag_c_row(lane, 0) < nk;
  const bool key_ok1 = warp * 16 + frag_c_row(lane, 2) < nk;
  const float scale_log2 = p.scale * kLog2e;
  const int num_qb = static_cast<int>(blocks_of(it.seg_length, BQ));
  const T* q_rot = static_cast<const T*>(a.q_rot) + (h * num_tokens + it.seg_begin) * DQ;
  const T* do_g = static_cast<const T*>(p.dout) + it.seg_begin * p.dout_stride_token + h * p.dout_stride_head;

  for (int qb = 0; qb < num_qb; ++qb) {
    const int nq = tile_count(it.seg_length, static_cast<int64_t>(qb) * BQ, BQ);
    const int64_t q0 = static_cast<int64_t>(qb) * BQ;  // local to the segment
    {
      constexpr int KC = DQ / 8;
      for (int i = tid; i < BQ * KC; i += kThreads) {
        const int r = i / KC, c = i % KC;
        const bool ok = r < nq;
        const int64_t row = q0 + (ok ? r : 0);
        cp_async16(q_s + chunk_offset(r, c, SQ), q_rot + row * DQ + c * 8, ok);
        const bool dok = ok && c < D / 8;
        cp_async16(do_s + chunk_offset(r, c, SQ), do_g + row * p.dout_stride_token + (dok ? c * 8 : 0), dok);
      }
      cp_async_commit();
      for (int i = tid; i < BQ; i += kThreads) {
        const bool ok = i < nq;
        const int64_t at = h * num_tokens + it.seg_begin + q0 + i;
        lse_s[i] = ok ? p.lse[at] * kLog2e : INFINITY;  // +inf: P = 0 for rows past the segment
        delta_s[i] = ok ? a.delta[at] : 0.f;
      }
      cp_async_wait<0>();
      __syncthreads();
    }

    // S^T = K Q^T for this warp's 16 keys.
    float st[NTQ][4], dpt[NTQ][4];
#pragma unroll
    for (int j = 0; j < NTQ; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) st[j][i] = dpt[j][i] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) {
      uint32_t ka[4], va[4];
      ldsm_x4(ka, k_s + bwd_kv_frag(warp, kk, lane, SQ));
      ldsm_x4(va, v_s + bwd_kv_frag(warp, kk, lane, SQ));
#pragma unroll
      for (int np = 0; np < NTQ / 2; ++np) {
        uint32_t b[4];
        ldsm_x4(b, q_s + bwd_qdo_frag(np, kk, lane, SQ));
        mma<T>(st[2 * np], ka, b[0], b[1]);
        mma<T>(st[2 * np + 1], ka, b[2], b[3]);
        ldsm_x4(b, do_s + bwd_qdo_frag(np, kk, lane, SQ));
        mma<T>(dpt[2 * np], va, b[0], b[1]);
        mma<T>(dpt[2 * np + 1], va, b[2], b[3]);
      }
    }
    // P^T and dS^T (keys past the segment end get P = 0, so they add nothing to dQ).
#pragma unroll
    for (int j = 0; j < NTQ; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int qc = j * 8 + frag_c_col(lane, i);
        const float pt = (i < 2 ? key_ok0 : key_ok1) ? exp2f(st[j][i] * scale_log2 - lse_s[qc]) : 0.f;
        st[j][i] = pt;
        dpt[j][i] = pt * (dpt[j][i] - delta_s[qc]);
      }

    // dV += P^T dO, then dK += dS^T Q (k = queries; accumulator layout reused as the A operand).  Two
    // separate passes keep fewer fragments live (the D = 128 instantiation is at the register limit).
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      const uint32_t pa[4] = {pack2<T>(st[2 * kk][0], st[2 * kk][1]), pack2<T>(st[2 * kk][2], st[2 * kk][3]),
                              pack2<T>(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                              pack2<T>(st[2 * kk + 1][2], st[2 * kk + 1][3])};
      mma_rows_times_tile<T, NTD>(dv, pa, do_s, kk, 0, SQ, lane);
    }
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      const uint32_t da[4] = {pack2<T>(dpt[2 * kk][0], dpt[2 * kk][1]), pack2<T>(dpt[2 * kk][2], dpt[2 * kk][3]),
                              pack2<T>(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                              pack2<T>(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
      mma_rows_times_tile<T, NTD>(dk, da, q_s, kk, 0, SQ, lane);
      // dS^T to shared memory (rows = keys, cols = queries), for dQ.
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        *reinterpret_cast<uint32_t*>(ds_s + bwd_ds_store(warp, kk, half, lane, 0, SS)) = half ? da[2] : da[0];
        *reinterpret_cast<uint32_t*>(ds_s + bwd_ds_store(warp, kk, half, lane, 2, SS)) = half ? da[3] : da[1];
      }
    }
    __syncthreads();

    // dQ[BQ x D] += dS K, split over the warps as (m-tile, group of n-tiles); fp32 atomics into the workspace.
    {
      const int mt = warp % MT, grp = warp / MT;
      float dq[NTG][4];
#pragma unroll
      for (int t = 0; t < NTG; ++t) dq[t][0] = dq[t][1] = dq[t][2] = dq[t][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        uint32_t aa[4];
        ldsm_x4_t(aa, ds_s + bwd_ds_frag(kk, mt, lane, SS));
        mma_rows_times_tile<T, NTG>(dq, aa, k_s, kk, grp * NTG * 8, SQ, lane);
      }
      float* dq_g = a.dq_accum + (h * num_tokens + it.seg_begin + q0) * D;
#pragma unroll
      for (int t = 0; t < NTG; ++t)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = bwd_dq_row(mt, lane, i);
          if (row < nq) atomicAdd(dq_g + row * D + bwd_dq_col(grp, NTG, t, lane, i), dq[t][i]);
        }
    }
    __syncthreads();  // q_s, do_s, ds_s are refilled by the next query tile
  }

  // Epilogue.  dV straight from registers; dK * scale staged in fp32 over the K/V tiles, then rotated back.
  T* dv_g = static_cast<T*>(p.dv) + it.row_begin * p.dv_stride_token + h * p.dv_stride_head;
  float* dk_s = reinterpret_cast<float*>(smem_raw);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = out_frag_row(warp, lane, r);
#pragma unroll
    for (int t = 0; t < NTD; ++t) {
      const int col = out_frag_col(t, lane);
      if (row < nk)
        *reinterpret_cast<uint32_t*>(dv_g + static_cast<int64_t>(row) * p.dv_stride_token + col) =
            pack2<T>(dv[t][2 * r], dv[t][2 * r + 1]);
      dk_s[row * D + col] = dk[t][2 * r] * p.scale;
      dk_s[row * D + col + 1] = dk[t][2 * r + 1] * p.scale;
    }
  }
  __syncthreads();
  T* dk_g = static_cast<T*>(p.dk) + it.row_begin * p.dk_stride_token + h * p.dk_stride_head;
  const float2* cs = a.cos_sin + it.row_begin * HALF;
  for (int i = tid; i < nk * HALF; i += kThreads) {
    const int r = i / HALF, j = i % HALF;
    const float x = dk_s[r * D + j], y = dk_s[r * D + j + HALF];
    const float2 t = cs[static_cast<int64_t>(r) * HALF + j];
    T* out = dk_g + static_cast<int64_t>(r) * p.dk_stride_token;
    out[j] = from_float<T>(x * t.x + y * t.y);
    out[j + HALF] = from_float<T>(y * t.x - x * t.y);
  }
}

// dq = scale * R^T dq_accum in the input dtype, after the main kernel has accumulated every dS K product.
template <typename T, int D>
__global__ void dq_finalize_kernel(const AttnDevArgs a) {
  constexpr int HALF = D / 2;
  const AttentionParams& p = a.p;
  const int64_t total = p.num_tokens * p.num_heads * HALF;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  if (bad_cu_seqlens(a)) {  // the main backward kernel had no work: every gradient is NaN
    fill_nan_thd(static_cast<T*>(p.dq), p.dq_stride_token, p.dq_stride_head, p);
    fill_nan_thd(static_cast<T*>(p.dk), p.dk_stride_token, p.dk_stride_head, p);
    fill_nan_thd(static_cast<T*>(p.dv), p.dv_stride_token, p.dv_stride_head, p);
    return;
  }
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const int j = static_cast<int>(i % HALF);
    const int64_t th = i / HALF;
    const int h = static_cast<int>(th % p.num_heads);
    const int64_t t = th / p.num_heads;
    const float* acc = a.dq_accum + (h * p.num_tokens + t) * D;
    const float x = acc[j] * p.scale, y = acc[j + HALF] * p.scale;
    const float2 cs = a.cos_sin[t * HALF + j];
    T* out = static_cast<T*>(p.dq) + t * p.dq_stride_token + h * p.dq_stride_head;
    out[j] = from_float<T>(x * cs.x + y * cs.y);
    out[j + HALF] = from_float<T>(y * cs.x - x * cs.y);
  }
}

}  // namespace

// The whole backward call, (dtype, head dim) dispatched once: the pre-passes, the main kernel, dq finalized.
void attention_tc_backward(const AttnDevArgs& a, int64_t max_seqlen, cudaStream_t s) {
  attn_tc_dispatch(a.p.dtype, a.p.head_dim, "rope2d_attention_backward", [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int D = decltype(dim)::value;
    const AttentionParams& p = a.p;
    tc_prepass<T, D>(a, max_seqlen, true, s);
    static_assert(bwd_smem_bytes(D) == bwd_smem(D).stats_byte + 2 * bwd_block_q(D) * 4, "carve-up = launched size");
    // The hint-free bound: the kernel computes one work item per CTA.
    launch_main(attn_bwd_kernel<T, D>, "attn_bwd_kernel", a, bwd_smem_bytes(D),
                launch_grid_x(p.num_tokens, p.num_segments, kBlockN, -1), kThreads, s);
    dq_finalize_kernel<T, D><<<grid_for(p.num_tokens * p.num_heads * (D / 2), 256), 256, 0, s>>>(a);
    check_launch(kernel_name("dq_finalize_kernel", p.dtype, D), s);
  });
}

}  // namespace vl3fast::cuda
