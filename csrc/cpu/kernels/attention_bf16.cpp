// rope2d attention forward for bf16 inputs on AVX512-BF16: q.k^T and p.v as bf16 dot products
// (vdpbf16ps: two bf16 products per fp32 lane, accumulated in fp32), twice the multiply-adds per
// instruction of the fp32 kernel.  Compiled in every ISA build; only builds with __AVX512BF16__ (the
// avx512bf16 level, isa.h) define the kernel, and only they call it (kernels/attention.cpp).
//
// Per work item (segment, head, 256-query block), as the fp32 forward (attention_kernel.h), except:
// - q and k are rotated in fp32 and rounded to bf16 once (transformers rotates in fp32 and casts back to
//   bf16 before its SDPA: the same rounding); the softmax scale is applied to S in fp32, not folded into q.
// - Tiles are laid out for the pair-wise dot product: a row of A is 32-bit words of two bf16 of
//   consecutive k, a row of B holds, for each column, the same two k.  So Q is row-major bf16, K is
//   stored as [D/2 pairs x 64 keys] words (a transpose of 32-bit pairs), V as [32 key pairs x Dp] words
//   (two consecutive keys' values interleaved), and P = exp(S - m) is rounded to bf16 row-major (as
//   torch's flash CPU kernel does for reduced types) in place over the first half of each S row.
// - Softmax statistics (max, sum) and O stay fp32.
#include "../attention_kernel.h"

#if defined(__AVX512BF16__)

namespace vl3fast::cpu::VL3FAST_ISA_NS {
namespace {

// C[RI x 16*NN] (+)= A[RI x K2 words] B[K2 x 16*NN words]; accumulators stay in registers.
template <int RI, int NN>
static inline void dot_kernel(const uint32_t* A, int lda, const uint32_t* B, int ldb, float* C, int ldc, int K2,
                              bool accumulate) {
  __m512 c[RI][NN];
  for (int r = 0; r < RI; ++r)
    for (int n = 0; n < NN; ++n) c[r][n] = accumulate ? _mm512_loadu_ps(C + r * ldc + 16 * n) : _mm512_setzero_ps();
  for (int kk = 0; kk < K2; ++kk) {
    __m512bh b[NN];
    for (int n = 0; n < NN; ++n) b[n] = (__m512bh)_mm512_loadu_si512(B + static_cast<int64_t>(kk) * ldb + 16 * n);
    for (int r = 0; r < RI; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[r * lda + kk]));
      for (int n = 0; n < NN; ++n) c[r][n] = _mm512_dpbf16_ps(c[r][n], a, b[n]);
    }
  }
  for (int r = 0; r < RI; ++r)
    for (int n = 0; n < NN; ++n) _mm512_storeu_ps(C + r * ldc + 16 * n, c[r][n]);
}

template <int NN>
static void dot_columns(const uint32_t* A, int lda, const uint32_t* B, int ldb, float* C, int ldc, int M, int K2,
                        bool accumulate) {
  constexpr int RI = NN <= 4 ? 6 : 4;  // 24 or 20 (NN = 5, 6: up to 24) of the 32 zmm hold accumulators
  int m = 0;
  for (; m + RI <= M; m += RI) dot_kernel<RI, NN>(A + m * lda, lda, B, ldb, C + m * ldc, ldc, K2, accumulate);
  for (; m < M; m += 2) dot_kernel<2, NN>(A + m * lda, lda, B, ldb, C + m * ldc, ldc, K2, accumulate);
}

// C[M x N] (+)= A B over K2 bf16 pairs; M even, N a multiple of 16.
static void dot_gemm(const uint32_t* A, int lda, const uint32_t* B, int ldb, float* C, int ldc, int M, int N, int K2,
                     bool accumulate) {
  int n0 = 0, nv = N / 16;
  while (nv > 0) {
    const int chunk = nv <= 6 ? nv : 4;
    switch (chunk) {
      case 1: dot_columns<1>(A, lda, B + n0, ldb, C + n0, ldc, M, K2, accumulate); break;
      case 2: dot_columns<2>(A, lda, B + n0, ldb, C + n0, ldc, M, K2, accumulate); break;
      case 3: dot_columns<3>(A, lda, B + n0, ldb, C + n0, ldc, M, K2, accumulate); break;
      case 4: dot_columns<4>(A, lda, B + n0, ldb, C + n0, ldc, M, K2, accumulate); break;
      case 5: dot_columns<5>(A, lda, B + n0, ldb, C + n0, ldc, M, K2, accumulate); break;
      default: dot_columns<6>(A, lda, B + n0, ldb, C + n0, ldc, M, K2, accumulate); break;
    }
    n0 += chunk * 16;
    nv -= chunk;
  }
}

// n (a multiple of 16) floats -> bf16, round to nearest even (vcvtneps2bf16).
static inline void round_to_bf16(const float* x, uint16_t* out, int n) {
  for (int d = 0; d < n; d += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + d)));
}

template <int kD>
struct Bf16DotForward {
  const Attention<bf16, kD> a;  // tables, the work-item list, row loading and rotation

  explicit Bf16DotForward(const AttentionParams& p) : a(p, false) {}

  // One row of x (bf16) at token t, rotated in fp32 and rounded to bf16, zero padded to Dp.
  void rotated_row(const bf16* src, int64_t t, float* in, float* rot, uint16_t* out) const {
    a.load_row(src, in);
    a.rotate_row(in, t, 1.0f, 1.0f, rot);
    for (int d = a.D; d < a.Dp; ++d) rot[d] = 0.0f;
    round_to_bf16(rot, out, a.Dp);
  }

  void item(int64_t item, float* w) const {
    const AttentionParams& p = a.p;
    const auto rows = a.item_rows(item, BQF);
    const int h = rows.head, D = a.D, Dp = a.Dp, Dp2 = Dp / 2, D2 = D / 2;
    const int64_t start = rows.seg_start, len = rows.seg_len, q0 = rows.first;
    const int nq = rows.count, mq = round_up(nq, 4);

    uint32_t* q = reinterpret_cast<uint32_t*>(w);  // [256 x Dp/2] words: bf16 rows
    uint32_t* kp = q + BQF * Dp2;                  // [Dp/2 x 64] words: kp[pair * 64 + key]
    uint32_t* vp = kp + Dp2 * BK;                  // [32 x Dp] words: vp[key / 2 * Dp + d]
    float* o = reinterpret_cast<float*>(vp + BK / 2 * Dp);  // [256 x Dp]
    float* s = o + BQF * Dp;                       // [256 x 64]; P (bf16) over each row's first half
    float* m = s + BQF * BK;                       // [256]
    float* l = m + BQF;                            // [256]
    float* in = l + BQF;                           // [Dp]
    float* rot = in + Dp;                          // [Dp]
    uint16_t* row16 = reinterpret_cast<uint16_t*>(rot + Dp);  // [Dp]

    const bf16* qx = static_cast<const bf16*>(p.q);
    const bf16* kx = static_cast<const bf16*>(p.k);
    const uint16_t* vx = static_cast<const uint16_t*>(p.v);
    for (int i = 0; i < mq; ++i) {
      uint16_t* dst = reinterpret_cast<uint16_t*>(q + i * Dp2);
      if (i < nq) rotated_row(qx + (q0 + i) * p.q_stride_token + h * p.q_stride_head, q0 + i, in, rot, dst);
      else std::memset(dst, 0, sizeof(uint16_t) * Dp);
      m[i] = -INFINITY;
      l[i] = 0.0f;
    }
    std::memset(o, 0, sizeof(float) * mq * Dp);
    const __m512 vscale = _mm512_set1_ps(p.scale);

    for (int64_t k0 = start; k0 < start + len; k0 += BK) {
      const int nk = static_cast<int>(start + len - k0 < BK ? start + len - k0 : BK);
      const int nk16 = round_up(nk, VW), pairs = (nk + 1) / 2;
      for (int j = 0; j < nk16; ++j) {
        if (j < nk) {
          rotated_row(kx + (k0 + j) * p.k_stride_token + h * p.k_stride_head, k0 + j, in, rot, row16);
          const uint32_t* words = reinterpret_cast<const uint32_t*>(row16);
          for (int c = 0; c < D2; ++c) kp[c * BK + j] = words[c];
        } else {
          for (int c = 0; c < D2; ++c) kp[c * BK + j] = 0;
        }
      }
      for (int jp = 0; jp < pairs; ++jp) {
        const uint16_t* v0 = vx + (k0 + 2 * jp) * p.v_stride_token + h * p.v_stride_head;
        const uint16_t* v1 = 2 * jp + 1 < nk ? v0 + p.v_stride_token : nullptr;
        uint32_t* dst = vp + jp * Dp;
        for (int d = 0; d < D; ++d) dst[d] = v0[d] | (v1 != nullptr ? static_cast<uint32_t>(v1[d]) << 16 : 0u);
        for (int d = D; d < Dp; ++d) dst[d] = 0;
      }
      a.prefetch_rows(kx, p.k_stride_token, p.k_stride_head, h, k0 + BK, start + len);
      a.prefetch_rows(reinterpret_cast<const bf16*>(vx), p.v_stride_token, p.v_stride_head, h, k0 + BK, start + len);
      dot_gemm(q, Dp2, kp, BK, s, kLdS, mq, nk16, D2, false);
      for (int i = 0; i < nq; ++i) {
        float* si = s + i * kLdS;
        for (int j = nk; j < nk16; ++j) si[j] = -INFINITY;  // padded keys: P = 0
        __m512 vmax = _mm512_loadu_ps(si);
        for (int j = 16; j < nk16; j += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(si + j));
        const float row_max = hmax((vnat)vmax) * p.scale;
        const float mx = row_max > m[i] ? row_max : m[i];
        const float alpha = exp_nonpositive(m[i] - mx);
        const __m512 vmx = _mm512_set1_ps(mx);
        __m512 vsum = _mm512_setzero_ps();
        uint16_t* pi = reinterpret_cast<uint16_t*>(si);  // P overwrites what was already read
        for (int j = 0; j < nk16; j += 16) {
          const __m512 e = (__m512)vexp_nonpositive((vnat)_mm512_fmsub_ps(_mm512_loadu_ps(si + j), vscale, vmx));
          vsum = _mm512_add_ps(vsum, e);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pi + j), (__m256i)_mm512_cvtneps_pbh(e));
        }
        m[i] = mx;
        l[i] = l[i] * alpha + hsum((vnat)vsum);
        float* oi = o + i * Dp;
        const __m512 valpha = _mm512_set1_ps(alpha);
        for (int d = 0; d < Dp; d += 16) _mm512_storeu_ps(oi + d, _mm512_mul_ps(_mm512_loadu_ps(oi + d), valpha));
      }
      // Rows nq..mq of S are q's zero padding: S = 0, read as bf16 P = 0.  P's row stride is S's (64 words).
      dot_gemm(reinterpret_cast<const uint32_t*>(s), kLdS, vp, Dp, o, Dp, mq, Dp, pairs, true);
    }

    bf16* out = static_cast<bf16*>(p.out);
    for (int i = 0; i < nq; ++i) {
      const float inv = 1.0f / l[i];
      bf16* dst = out + (q0 + i) * p.out_stride_token + h * p.out_stride_head;
      const float* oi = o + i * Dp;
      for (int d = 0; d < D; ++d) dst[d] = from_float<bf16>(oi[d] * inv);
      p.lse[h * a.NT + q0 + i] = m[i] + std::log(l[i]);
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
