// Forward tensor-core kernel of rope2d attention (tile configuration and reasons: vl3fast/attention_tc.h).
//
// One CTA = (64-query block, head); 4 warps, 16 query rows each.  A CTA loops over the work items
// blockIdx.x, blockIdx.x + gridDim.x, ... below the device-derived count (attention_tc.h), so the grid
// size (from the max_seqlen hint) never changes the result.  The Q tile is read from q,
// rotated with the pre-computed cos/sin table (fp32), rounded to the input dtype (as the transformers
// path rounds its fp32 RoPE output) and kept as MMA A fragments in registers.  K tiles (pre-rotated,
// padded to D_qk with zeros by the pre-pass) and V tiles stream through double-buffered shared memory
// with cp.async; rows past the segment end are zero-filled and their logits masked to -inf.
// S = Q K^T contracts over D_qk (72 -> 80: 5 k-steps); online softmax in base 2 with fp32 statistics;
// O += P V with D/8 n-tiles (72 -> 9, no padding).  Writes out = O / l and lse = ln(sum exp(scaled S)).
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

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(const AttnDevArgs a) {
  constexpr int DQ = qk_dim(D);
  constexpr int SQ = row_stride(DQ);
  constexpr int SV = row_stride(D);
  constexpr int KS = DQ / 16;        // k-steps of Q K^T
  constexpr int NTD = D / 8;         // n-tiles of P V
  constexpr int NTS = kBlockN / 8;   // n-tiles of S
  constexpr int HALF = D / 2;
  constexpr float kLog2e = 1.4426950408889634f;
  static_assert(D % 8 == 0 && NTS % 2 == 0, "tile shapes");

  const AttentionParams& p = a.p;
  const int64_t num_tokens = p.num_tokens;
  if (bad_cu_seqlens(a)) {
    fill_nan_thd(static_cast<T*>(p.out), p.out_stride_token, p.out_stride_head, p);
    fill_nan_lse(p);
    return;
  }
  const int h = blockIdx.y;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr FwdSmem L = fwd_smem(D);
  T* k_s = reinterpret_cast<T*>(smem_raw) + L.k0;  // 2 buffers of kBlockN x SQ
  T* v_s = reinterpret_cast<T*>(smem_raw) + L.v0;  // 2 buffers of kBlockN x SV
  // The Q tile lives in K buffer 1 until its fragments are in registers (kBlockM == kBlockN): at head dim
  // 128 this keeps shared memory at 68 KiB, two CTAs per SM on sm80.
  static_assert(kBlockM == kBlockN, "Q tile aliases one K buffer");
  T* q_s = reinterpret_cast<T*>(smem_raw) + L.q0;

  for (int w = blockIdx.x;; w += gridDim.x) {  // int32: block_start is int32
    const WorkItem it = decode_work_item(a.block_start, p.cu_seqlens, p.num_segments, num_tokens, kBlockM, w);
    if (it.segment < 0) return;  // past the last work item

    const T* k_rot = static_cast<const T*>(a.k_rot) + (h * num_tokens + it.seg_begin) * DQ;
    const T* v_g = static_cast<const T*>(p.v) + it.seg_begin * p.v_stride_token + h * p.v_stride_head;
    const int num_kb = static_cast<int>(blocks_of(it.seg_length, kBlockN));

    auto load_kv = [&](int kb, int buf) {
      const int n = tile_count(it.seg_length, static_cast<int64_t>(kb) * kBlockN, kBlockN);
      T* ks = k_s + buf * L.k_buf;
      T* vs = v_s + buf * L.v_buf;
      constexpr int KC = DQ / 8, VC = D / 8;
      for (int i = tid; i < kBlockN * KC; i += kThreads) {
        const int r = i / KC, c = i % KC;
        const bool ok = r < n;
        cp_async16(ks + chunk_offset(r, c, SQ), k_rot + static_cast<int64_t>(ok ? kb * kBlockN + r : 0) * DQ + c * 8,
                   ok);
      }
      for (int i = tid; i < kBlockN * VC; i += kThreads) {
        const int r = i / VC, c = i % VC;
        const bool ok = r < n;
        cp_async16(vs + chunk_offset(r, c, SV),
                   v_g + static_cast<int64_t>(ok ? kb * kBlockN + r : 0) * p.v_stride_token + c * 8, ok);
      }
    };

    load_kv(0, 0);
    cp_async_commit();

    // Q tile: rotate in fp32, round to T; pad channels D..DQ-1 and rows past the segment are zero.
    {
      const T* q_g = static_cast<const T*>(p.q) + it.row_begin * p.q_stride_token + h * p.q_stride_head;
      const float2* cs = a.cos_sin + it.row_begin * HALF;
      constexpr int PAIRS = DQ / 2;
      for (int i = tid; i < kBlockM * PAIRS; i += kThreads) {
        const int r = i / PAIRS, j = i % PAIRS;
        float x0 = 0.f, x1 = 0.f;
        if (j < HALF) {
          if (r < it.rows) {
            const T* qr = q_g + static_cast<int64_t>(r) * p.q_stride_token;
            const float x = to_float(qr[j]), y = to_float(qr[j + HALF]);
            const float2 t = cs[static_cast<int64_t>(r) * HALF + j];
            x0 = x * t.x - y * t.y;
            x1 = y * t.x + x * t.y;
          }
        }
        q_s[r * SQ + fwd_q_pair_channel(j, D, 0)] = from_float<T>(x0);
        q_s[r * SQ + fwd_q_pair_channel(j, D, 1)] = from_float<T>(x1);
      }
    }
    __syncthreads();
    uint32_t qf[KS][4];
  #pragma unroll
    for (int kk = 0; kk < KS; ++kk)
      ldsm_x4(qf[kk], q_s + fwd_q_frag(warp, kk, lane, SQ));
    __syncthreads();  // K buffer 1 (holding Q) is refilled by the first iteration

    float o[NTD][4];
  #pragma unroll
    for (int t = 0; t < NTD; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
    float row_max[2] = {-INFINITY, -INFINITY};
    float row_sum[2] = {0.f, 0.f};
    const float scale_log2 = p.scale * kLog2e;

    for (int kb = 0; kb < num_kb; ++kb) {
      const int buf = kb & 1;
      if (kb + 1 < num_kb) {
        load_kv(kb + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const T* ks = k_s + buf * L.k_buf;
      const T* vs = v_s + buf * L.v_buf;

      float s[NTS][4];
  #pragma unroll
      for (int j = 0; j < NTS; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
  #pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
  #pragma unroll
        for (int np = 0; np < NTS / 2; ++np) {
          uint32_t b[4];
          ldsm_x4(b, ks + fwd_k_frag(np, kk, lane, SQ));
          mma<T>(s[2 * np], qf[kk], b[0], b[1]);
          mma<T>(s[2 * np + 1], qf[kk], b[2], b[3]);
        }
      }
      const int n_valid = tile_count(it.seg_length, static_cast<int64_t>(kb) * kBlockN, kBlockN);
  #pragma unroll
      for (int j = 0; j < NTS; ++j)
  #pragma unroll
        for (int i = 0; i < 4; ++i)
          s[j][i] = j * 8 + frag_c_col(lane, i) < n_valid ? s[j][i] * scale_log2 : -INFINITY;

      // Online softmax for this thread's two rows (g and g + 8); the 4 lanes of a row group share it.
  #pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[r];
  #pragma unroll
        for (int j = 0; j < NTS; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float alpha = exp2f(row_max[r] - mx);  // row_max starts at -inf: alpha = 0
        row_max[r] = mx;
        float sum = 0.f;
  #pragma unroll
        for (int j = 0; j < NTS; ++j) {
          s[j][2 * r] = exp2f(s[j][2 * r] - mx);
          s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - mx);
          sum += s[j][2 * r] + s[j][2 * r + 1];
        }
        row_sum[r] = row_sum[r] * alpha + sum;  // per-lane partial; reduced over the 4 lanes at the end
  #pragma unroll
        for (int t = 0; t < NTD; ++t) {
          o[t][2 * r] *= alpha;
          o[t][2 * r + 1] *= alpha;
        }
      }

      // O += P V: P's accumulator layout is the A layout of the next MMA (k = keys).
  #pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
  #pragma unroll
        for (int np = 0; np < NTD / 2; ++np) {
          uint32_t b[4];
          ldsm_x4_t(b, vs + fwd_v_frag(kk, np, lane, SV));
          mma<T>(o[2 * np], pa, b[0], b[1]);
          mma<T>(o[2 * np + 1], pa, b[2], b[3]);
        }
        if constexpr (NTD % 2 == 1) {
          uint32_t b[2];
          ldsm_x2_t(b, vs + fwd_v_frag_last(kk, NTD, lane, SV));
          mma<T>(o[NTD - 1], pa, b[0], b[1]);
        }
      }
      __syncthreads();  // the next iteration refills the buffer read here
    }

    // Epilogue: out = O / l; lse = ln 2 * (max + log2 l) for rows inside the segment.
    T* out_g = static_cast<T*>(p.out) + it.row_begin * p.out_stride_token + h * p.out_stride_head;
  #pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_sum[r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = 1.f / l;
      const int row = out_frag_row(warp, lane, r);
      if (row < it.rows) {
        T* orow = out_g + static_cast<int64_t>(row) * p.out_stride_token;
  #pragma unroll
        for (int t = 0; t < NTD; ++t)
          *reinterpret_cast<uint32_t*>(orow + out_frag_col(t, lane)) = pack2<T>(o[t][2 * r] * inv, o[t][2 * r + 1] * inv);
        if (lane % 4 == 0) p.lse[h * num_tokens + it.row_begin + row] = (row_max[r] + log2f(l)) * 0.6931471805599453f;
      }
    }
    __syncthreads();  // the next work item refills the tiles
  }
}

}  // namespace

// The whole forward call, (dtype, head dim) dispatched once: the pre-passes, then the main kernel.
void attention_tc_forward(const AttnDevArgs& a, int64_t max_seqlen, cudaStream_t s) {
  attn_tc_dispatch(a.p.dtype, a.p.head_dim, "rope2d_attention", [&](auto tag, auto dim) {
    using T = typename decltype(tag)::type;
    constexpr int D = decltype(dim)::value;
    tc_prepass<T, D>(a, max_seqlen, false, s);
    static_assert(fwd_smem_bytes(D) == 2 * (fwd_smem(D).v0 + 2 * fwd_smem(D).v_buf), "carve-up = launched size");
    launch_main(attn_fwd_kernel<T, D>, "attn_fwd_kernel", a, fwd_smem_bytes(D),
                launch_grid_x(a.p.num_tokens, a.p.num_segments, kBlockM, max_seqlen), kThreads, s);
  });
}

}  // namespace vl3fast::cuda
