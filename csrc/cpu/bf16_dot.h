// bf16 dot-product building blocks of the CPU attention on AVX512-BF16 (vdpbf16ps: two bf16 products per
// fp32 lane, accumulated in fp32): the broadcast-A GEMM on pair-packed operands (dot_gemm) and the packing and
// rounding helpers.  Shared by the bf16 forward (kernels/attention_bf16.cpp) and backward
// (kernels/attention_bf16_backward.cpp); included by csrc/cpu/kernels/ only (the ISA's namespace), and empty
// in ISA builds without __AVX512BF16__.
//
// Pair packing: every operand element is a 32-bit word of two bf16 of consecutive k (the contraction index):
// a bf16 row contracted along its own elements is read as words as it is (Q, K, dO rows over the head dim);
// rows contracted across tokens are interleaved two by two (interleave_rows, pack_pairs).
#pragma once
#include <cstdint>

#include "vec_math.h"

#if defined(__AVX512BF16__)

namespace vl3fast::cpu::VL3FAST_ISA_NS {

static_assert(kLanes == 16 && kGemmChunk == 16, "the dot-product blocks are zmm wide");

// bcast_gemm's register block on bf16 pairs: C[RI x 16*NV] (op)= A[RI x K2] B[K2 x 16*NV], all elements
// 32-bit words of two bf16 (K2 counts pairs), A's element (r, k) at A[r * lda + k * ldk] (broadcast), B and
// C row-major; kMode as bcast_gemm's.
template <int RI, int NV, BcastMode kMode>
static inline void dot_block(const uint32_t* A, int64_t lda, int64_t ldk, const uint32_t* B, int ldb, float* C,
                             int ldc, int K2, float* aux) {
  __m512 c[RI][NV];
  VL3FAST_UNROLL
  for (int r = 0; r < RI; ++r)
    VL3FAST_UNROLL
    for (int n = 0; n < NV; ++n) c[r][n] = _mm512_setzero_ps();
  const uint32_t* a = A;
  const uint32_t* b_row = B;
  for (int kk = 0; kk < K2; ++kk, a += ldk, b_row += ldb) {
    __m512bh b[NV];
    VL3FAST_UNROLL
    for (int n = 0; n < NV; ++n) b[n] = (__m512bh)_mm512_loadu_si512(b_row + 16 * n);
    VL3FAST_UNROLL
    for (int r = 0; r < RI; ++r) {
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * lda]));
      VL3FAST_UNROLL
      for (int n = 0; n < NV; ++n) c[r][n] = _mm512_dpbf16_ps(c[r][n], ar, b[n]);
    }
  }
  VL3FAST_UNROLL
  for (int n = 0; n < NV; ++n) {
    const __m512 s = kMode == BcastMode::kScaleAdd ? _mm512_loadu_ps(aux + 16 * n) : _mm512_setzero_ps();
    VL3FAST_UNROLL
    for (int r = 0; r < RI; ++r) {
      float* cr = C + r * ldc + 16 * n;
      if constexpr (kMode == BcastMode::kScaleAdd) c[r][n] = _mm512_fmadd_ps(_mm512_loadu_ps(cr), s, c[r][n]);
      if constexpr (kMode == BcastMode::kAdd) c[r][n] = _mm512_add_ps(_mm512_loadu_ps(cr), c[r][n]);
      _mm512_storeu_ps(cr, c[r][n]);
    }
    if constexpr (kMode == BcastMode::kStoreColMax) {
      __m512 mx = _mm512_loadu_ps(aux + 16 * n);
      VL3FAST_UNROLL
      for (int r = 0; r < RI; ++r) mx = (__m512)vmaximum((vnat)mx, (vnat)c[r][n]);
      _mm512_storeu_ps(aux + 16 * n, mx);
    }
  }
}

// The rows of one column panel: whole register blocks, then the remaining rows in one block.
template <int NV, BcastMode kMode, int R = bcast_rows<NV>() - 1>
static inline void dot_tail(int rows, const uint32_t* A, int64_t lda, int64_t ldk, const uint32_t* B, int ldb,
                            float* C, int ldc, int K2, float* aux) {
  if constexpr (R > 0) {
    if (rows == R) return dot_block<R, NV, kMode>(A, lda, ldk, B, ldb, C, ldc, K2, aux);
    dot_tail<NV, kMode, R - 1>(rows, A, lda, ldk, B, ldb, C, ldc, K2, aux);
  }
}

template <int NV, BcastMode kMode>
static void dot_panel(const uint32_t* A, int64_t lda, int64_t ldk, const uint32_t* B, int ldb, float* C, int ldc,
                      int M, int K2, float* aux) {
  constexpr int RI = bcast_rows<NV>();
  int m = 0;
  for (; m + RI <= M; m += RI) dot_block<RI, NV, kMode>(A + m * lda, lda, ldk, B, ldb, C + m * ldc, ldc, K2, aux);
  if (m < M) dot_tail<NV, kMode>(M - m, A + m * lda, lda, ldk, B, ldb, C + m * ldc, ldc, K2, aux);
}

// C[M x N] (op)= A B over K2 pairs (any BcastMode; N a multiple of 16): bcast_gemm's panel order (vec_math.h)
// on dot_block.  One fp32 chain per output, not split into K chunks as the fp32 products are (kHeadDimChunk,
// attention_kernel.h): pairs halve the chain (D/2 or 32 steps), and the bf16 rounding of the operands dominates.
template <BcastMode kMode>
static void dot_gemm(const uint32_t* A, int64_t lda, int64_t ldk, const uint32_t* B, int ldb, float* C, int ldc, int M,
                     int N, int K2, float* aux = nullptr) {
  for (int n0 = 0; n0 < N;) {
    const int left = (N - n0) / 16;
    const int nv = left <= 6 ? left : kBcastChunks;
    float* x = aux != nullptr ? aux + n0 : nullptr;
    switch (nv) {
      case 1: dot_panel<1, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K2, x); break;
      case 2: dot_panel<2, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K2, x); break;
      case 3: dot_panel<3, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K2, x); break;
      case 4: dot_panel<4, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K2, x); break;
      case 5: dot_panel<5, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K2, x); break;
      default: dot_panel<6, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K2, x); break;
    }
    n0 += nv * 16;
  }
}

// Two rows of 16 fp32 weights -> 16 words (bf16(e0) | bf16(e1) << 16), round to nearest even.
static inline __m512i pack_pairs(__m512 e0, __m512 e1) {
  const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);  // e0's 16 bf16, then e1's
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                              22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, both);
}

// 16 floats -> 16 bf16 exactly as from_float<bf16> (scalar_types.h): round to nearest even, NaN made quiet,
// denormals kept (vcvtneps2bf16 would flush them).
static inline __m256i round_to_bf16_bits(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet));
}

// r[j][i] <- r[i][j]: a 16 x 16 fp32 transpose (pairs, quads, then 128-bit lanes twice).
static inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_f32x4(u[8 * h + i], u[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_f32x4(u[8 * h + i], u[8 * h + 4 + i], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
  }
}

// n (a multiple of 16) floats -> bf16, round to nearest even (vcvtneps2bf16).
static inline void round_to_bf16(const float* x, uint16_t* out, int n) {
  for (int d = 0; d < n; d += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + d), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + d)));
}

// One row of a bf16 tensor (src: one head's values at token t), rotated in fp32 with the kernel's cos/sin table
// and rounded to bf16 once, zero padded to Dp: q and k as the bf16 forward and backward both read them (the same
// rounding, so the backward's S is the forward's).  `a` is their Attention<bf16, kD> (attention_kernel.h).
template <class Kernel, class Src>
static inline void rotated_bf16_row(const Kernel& a, const Src* src, int64_t t, float* in, float* rot, uint16_t* out) {
  a.load_row(src, in);
  a.rotate_row(in, t, 1.0f, 1.0f, rot);
  for (int d = a.D; d < a.Dp; ++d) rot[d] = 0.0f;
  round_to_bf16(rot, out, a.Dp);
}

// D values of two bf16 rows -> D words (v0[d] | v1[d] << 16); v1 == nullptr: zeros.
static inline void interleave_rows(const uint16_t* v0, const uint16_t* v1, int D, uint32_t* dst) {
  for (int d = 0; d < D; d += 16) {
    const __mmask16 mask = D - d >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (D - d)) - 1);
    const __m512i w0 = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, v0 + d));
    const __m512i w1 = v1 != nullptr ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, v1 + d))
                                     : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(dst + d, mask, _mm512_or_si512(w0, _mm512_slli_epi32(w1, 16)));
  }
}

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS

#endif  // __AVX512BF16__
