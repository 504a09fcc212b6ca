// rope2d attention forward for bf16 inputs on AVX512-BF16: q.k^T and p.v as bf16 dot products
// (vdpbf16ps: two bf16 products per fp32 lane, accumulated in fp32), twice the multiply-adds per
// instruction of the fp32 kernel.  Compiled in every ISA build; only builds with __AVX512BF16__ (the
// avx512bf16 level, isa.h) define the kernel, and only they call it (kernels/attention.cpp).
//
// Per work item (segment, head, 256-query block), as the fp32-tile forward (Attention::forward_item in
// attention_kernel.h: queries along the vector lanes, S^T = K Q^T and O^T = O^T * alpha + V^T P^T with A
// broadcast, the online softmax down the columns, no horizontal reductions), except:
// - q and k are rotated in fp32 and rounded to bf16 once (transformers rotates in fp32 and casts back to
//   bf16 before its SDPA: the same rounding); the softmax scale is applied to S in fp32, not folded into q.
// - The products contract over pairs: every operand element is a 32-bit word of two bf16 of consecutive k
//   (dot_gemm, bf16_dot.h).  Q^T is [D/2 pairs x 256 queries] words, K rows are bf16 rows read as D/2 words, V is
//   [32 key pairs x D] words (two consecutive keys' values interleaved), and P^T = 2^(...) is rounded to bf16
//   (as torch's flash CPU kernel does for reduced types) into [32 key pairs x 256 queries] words.
// - The softmax statistics (max, sum of the unrounded weights), S and O stay fp32.
// The pair-wise products halve the serial fp32 chains of both contractions (D/2 and 32 steps), so they are
// not split into K chunks as the fp32 products are (kHeadDimChunk, attention_kernel.h): bf16 rounding of q, k
// and P dominates.
#include "../attention_kernel.h"
#include "../bf16_dot.h"

#if defined(__AVX512BF16__)

namespace vl3fast::cpu::VL3FAST_ISA_NS {
namespace {

// Leading dim of the query-lane tiles (Q^T, S^T, P^T, O^T; attention_tiles.h): 256 + 16, so that their rows
// are not 1 KiB apart (rows 1 KiB apart fall into 4 of L1's 64 sets: the 36 rows of a Q^T panel, or one
// query's 72 values down O^T, then evict each other).
constexpr int kLd = kAttnBf16LdQ;

template <int kD>
struct Bf16DotForward {
  const Attention<bf16, kD> a;  // tables, the work-item list, row loading and rotation

  explicit Bf16DotForward(const AttentionParams& p) : a(p, false) {}

  void item(int64_t item, float* w) const {
    const AttentionParams& p = a.p;
    const auto rows = a.item_rows(item, BQF);
    const int h = rows.head, D = a.D, Dp = a.Dp, Dp2 = Dp / 2, D2 = D / 2;
    const int64_t start = rows.seg_start, len = rows.seg_len, q0 = rows.first;
    const int nq = rows.count;
    const int nq16 = round_up(nq, VW);  // lanes computed: queries nq.. of the last chunk are zero columns

    uint32_t* qp = reinterpret_cast<uint32_t*>(w);              // [D/2 x 256] words: Q^T
    float* ot = reinterpret_cast<float*>(qp + Dp2 * kLd);       // [D x 256]: O^T
    uint32_t* kp = reinterpret_cast<uint32_t*>(ot + Dp * kLd);  // [64 x Dp/2] words: K rows
    uint32_t* vp = kp + BK * Dp2;                               // [32 x Dp] words: vp[key / 2 * Dp + d]
    float* st = reinterpret_cast<float*>(vp + BK / 2 * Dp);     // [64 x 256]: S^T (unscaled)
    uint32_t* pw = reinterpret_cast<uint32_t*>(st + BK * kLd);  // [32 x 256] words: P^T
    float* m = reinterpret_cast<float*>(pw + BK / 2 * kLd);     // [256]: running max, log2 units
    float* l = m + BQF;                                         // [256]: running sum
    float* cm = l + BQF;                                        // [256]: the tile's column max, then alpha
    float* in = cm + BQF;                                       // [Dp]
    float* rot = in + Dp;                                       // [Dp]
    uint16_t* row16 = reinterpret_cast<uint16_t*>(rot + Dp);    // [Dp]

    const bf16* qx = static_cast<const bf16*>(p.q);
    const bf16* kx = static_cast<const bf16*>(p.k);
    const uint16_t* vx = static_cast<const uint16_t*>(p.v);
    // The first K/V tile and the next query rows are brought in while the queries are rotated (rows strided
    // by the token stride: the hardware prefetchers do not follow them).
    a.prefetch_rows(qx, p.q_stride_token, p.q_stride_head, h, q0, q0 + nq);
    a.prefetch_rows(kx, p.k_stride_token, p.k_stride_head, h, start, start + len);
    a.prefetch_rows(reinterpret_cast<const bf16*>(vx), p.v_stride_token, p.v_stride_head, h, start, start + len);
    for (int i = 0; i < nq16; ++i) {
      if (i % BK == 0) a.prefetch_rows(qx, p.q_stride_token, p.q_stride_head, h, q0 + i + BK, q0 + nq);
      if (i < nq) {
        rotated_bf16_row(a, qx + (q0 + i) * p.q_stride_token + h * p.q_stride_head, q0 + i, in, rot, row16);
        const uint32_t* words = reinterpret_cast<const uint32_t*>(row16);
        for (int c = 0; c < D2; ++c) qp[c * kLd + i] = words[c];
      } else {
        for (int c = 0; c < D2; ++c) qp[c * kLd + i] = 0;
      }
    }

    const __m512 sl = _mm512_set1_ps(p.scale * 1.44269504088896341f);  // the softmax scale, in log2 units
    for (int64_t k0 = start; k0 < start + len; k0 += BK) {
      const int nk = static_cast<int>(start + len - k0 < BK ? start + len - k0 : BK);
      const int pairs = (nk + 1) / 2;
      const bool first = k0 == start;
      for (int j = 0; j < nk; ++j)
        rotated_bf16_row(a, kx + (k0 + j) * p.k_stride_token + h * p.k_stride_head, k0 + j, in, rot,
                         reinterpret_cast<uint16_t*>(kp + j * Dp2));
      for (int jp = 0; jp < pairs; ++jp) {
        const uint16_t* v0 = vx + (k0 + 2 * jp) * p.v_stride_token + h * p.v_stride_head;
        interleave_rows(v0, 2 * jp + 1 < nk ? v0 + p.v_stride_token : nullptr, D, vp + jp * Dp);
      }
      a.prefetch_rows(kx, p.k_stride_token, p.k_stride_head, h, k0 + BK, start + len);
      a.prefetch_rows(reinterpret_cast<const bf16*>(vx), p.v_stride_token, p.v_stride_head, h, k0 + BK, start + len);

      for (int i = 0; i < nq16; i += 16) _mm512_storeu_ps(cm + i, _mm512_set1_ps(-INFINITY));
      dot_gemm<BcastMode::kStoreColMax>(kp, Dp2, 1, qp, kLd, st, kLd, nk, nq16, D2, cm);
      for (int i = 0; i < nq16; i += 16) {  // scale > 0: the max of S * scale is the max of S, times scale
        const vnat tile_max = (vnat)_mm512_mul_ps(_mm512_loadu_ps(cm + i), sl);
        const vnat m_old = vload(m + i);
        const vnat m_new = first ? tile_max : vmaximum(m_old, tile_max);
        vstore(m + i, m_new);
        vstore(cm + i, first ? vnat{} : vexp2_nonpositive(m_old - m_new));
      }
      for (int i = 0; i < nq16; i += 16) {  // P = 2^(S scale log2 e - m), two keys per word; l = l * alpha + sum
        const __m512 mi = _mm512_loadu_ps(m + i);
        __m512 sum = _mm512_setzero_ps();
        const float* s0 = st + i;
        uint32_t* pj = pw + i;
        for (int jp = 0; jp < pairs; ++jp, s0 += 2 * kLd, pj += kLd) {
          const __m512 e0 = (__m512)vexp2_nonpositive((vnat)_mm512_fmsub_ps(_mm512_loadu_ps(s0), sl, mi));
          const __m512 e1 = 2 * jp + 1 < nk
                                ? (__m512)vexp2_nonpositive((vnat)_mm512_fmsub_ps(_mm512_loadu_ps(s0 + kLd), sl, mi))
                                : _mm512_setzero_ps();
          sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
          _mm512_storeu_si512(pj, pack_pairs(e0, e1));
        }
        vstore(l + i, first ? (vnat)sum : vload(l + i) * vload(cm + i) + (vnat)sum);
      }
      // O^T = O^T * alpha + V^T P^T: V's pair word (d, key pair jp) is vp[jp * Dp + d].
      if (first) dot_gemm<BcastMode::kStore>(vp, 1, Dp, pw, kLd, ot, kLd, D, nq16, pairs);
      else dot_gemm<BcastMode::kScaleAdd>(vp, 1, Dp, pw, kLd, ot, kLd, D, nq16, pairs, cm);
    }

    // out = O / l: blocks of 16 d x 16 queries of O^T transposed in registers, rounded as from_float<bf16>.
    bf16* out = static_cast<bf16*>(p.out);
    for (int i0 = 0; i0 < nq; i0 += 16) {
      const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_loadu_ps(l + i0));
      const int nr = nq - i0 < 16 ? nq - i0 : 16;
      for (int d = 0; d < D; d += 16) {
        const int nd = D - d < 16 ? D - d : 16;
        __m512 r[16];
        for (int j = 0; j < 16; ++j)
          r[j] = j < nd ? _mm512_mul_ps(_mm512_loadu_ps(ot + (d + j) * kLd + i0), inv) : _mm512_setzero_ps();
        transpose16(r);
        const __mmask16 mask = nd == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nd) - 1);
        for (int j = 0; j < nr; ++j) {
          bf16* dst = out + (q0 + i0 + j) * p.out_stride_token + h * p.out_stride_head + d;
          _mm256_mask_storeu_epi16(dst, mask, round_to_bf16_bits(r[j]));
        }
      }
      for (int j = 0; j < nr; ++j) {
        const int i = i0 + j;
        p.lse[h * a.NT + q0 + i] = m[i] * 0.693147180559945309f + std::log(l[i]);
      }
    }
  }

  void run() const {
    const int64_t items = a.prepare(BQF);
#pragma omp parallel num_threads(a.p.num_threads)
    {
      float* w = a.thread_tiles(omp_get_thread_num());
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < items; ++it) item(it, w);
    }
  }
};

}  // namespace

template <int kD>
void forward_bf16_dot(const AttentionParams& p) {
  Bf16DotForward<kD>(p).run();
}

#define VL3FAST_INSTANTIATE_BF16_DOT(D) template void forward_bf16_dot<D>(const AttentionParams&);
VL3FAST_CPU_ATTN_FAST_HEAD_DIMS(VL3FAST_INSTANTIATE_BF16_DOT)
VL3FAST_INSTANTIATE_BF16_DOT(0)
#undef VL3FAST_INSTANTIATE_BF16_DOT

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS

#endif  // __AVX512BF16__
