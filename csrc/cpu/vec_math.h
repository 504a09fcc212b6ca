// Vector math for the CPU kernels, compiled once per ISA level (included only by csrc/cpu/kernels/, like
// scalar_types.h, so every definition lives in the ISA's own namespace): the native vector type, loads,
// stores and broadcasts, a register-blocked fp32 GEMM micro-kernel, a branch-free exp for softmax
// arguments, and lane reductions.  Written with GCC vector extensions in the ISA's native width (zmm,
// ymm or xmm), so the same source is the AVX-512, AVX2 and baseline build.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

// The vector helpers are static and inlined: the wider-vector argument ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace vl3fast::cpu::VL3FAST_ISA_NS {

constexpr int kGemmChunk = 16;  // floats per GEMM column chunk: N and tile leading dims are multiples of it

// The native vector of the ISA build.  GEMM columns come in chunks of kGemmChunk = 16 floats (one 512-bit
// vector, kGemmChunk / kLanes native vectors), so callers pad their tiles to 16 floats.
// Register blocking per build: kRowBlock rows x (up to kMaxChunk x 16 floats) of accumulators.
#if defined(__AVX512F__)
typedef float vnat __attribute__((vector_size(64)));
constexpr int kRowBlock = 4;  // 4 rows x up to 6 zmm: 24 of 32 registers hold accumulators
constexpr int kMaxChunk = 6;
#elif defined(__AVX2__)
typedef float vnat __attribute__((vector_size(32)));
constexpr int kRowBlock = 2;  // 2 rows x 4 ymm: 8 of 16 registers
constexpr int kMaxChunk = 2;
#else
typedef float vnat __attribute__((vector_size(16)));
constexpr int kRowBlock = 2;  // 2 rows x 4 xmm: 8 of 16 registers
constexpr int kMaxChunk = 1;
#endif
constexpr int kLanes = sizeof(vnat) / sizeof(float);
static_assert(kGemmChunk % kLanes == 0, "tile padding must be a whole number of native vectors");

static inline vnat vload(const float* p) {
  vnat v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
static inline void vstore(float* p, vnat v) { std::memcpy(p, &v, sizeof v); }
// Broadcast from memory.  Not `vnat{} + x`: without -ffast-math that is a scalar add plus a register
// shuffle, and on AVX-512 server cores the shuffle port is one of the two FMA ports.
static inline vnat vbroadcast(const float* p) {
#if defined(__AVX512F__)
  return (vnat)_mm512_set1_ps(*p);
#elif defined(__AVX2__)
  return (vnat)_mm256_broadcast_ss(p);
#else
  return (vnat)_mm_set1_ps(*p);
#endif
}

static inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// The contraction is summed in blocks of kGemmKBlock: each block's sum starts from zero in registers and
// is then added to C.  One serial chain over K = 256 (the head dim of q.k^T and dO.v^T) has ~3x the
// rounding error of 16-term blocks (rms, measured: 3.0e-7 vs 1.1e-7 at K = 256, 1.6e-7 vs 8.7e-8 at
// K = 80), and torch's own small matmuls are blocked or lane-strided, so a serial chain alone put the
// kernel's fp32 dq/dk/out beyond 2x torch's error (the tolerance rule of tests/ops/test_attention.py).
constexpr int kGemmKBlock = 16;

// C[RI x 16*NV] = A[RI x K] B[K x 16*NV] (+ C when `accumulate`, added after the sum); accumulators stay in
// registers.
template <int RI, int NV>
static inline void micro_kernel(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int K,
                                bool accumulate) {
  constexpr int NN = NV * kGemmChunk / kLanes;
  vnat c[RI][NN];
  for (int r = 0; r < RI; ++r)
    for (int n = 0; n < NN; ++n) c[r][n] = vnat{};
  for (int kk = 0; kk < K; ++kk) {
    vnat b[NN];
    for (int n = 0; n < NN; ++n) b[n] = vload(B + static_cast<int64_t>(kk) * ldb + n * kLanes);
    for (int r = 0; r < RI; ++r) {
      const vnat a = vbroadcast(A + r * lda + kk);
      for (int n = 0; n < NN; ++n) c[r][n] += a * b[n];
    }
  }
  for (int r = 0; r < RI; ++r)
    for (int n = 0; n < NN; ++n) {
      float* cr = C + r * ldc + n * kLanes;
      vstore(cr, accumulate ? vload(cr) + c[r][n] : c[r][n]);
    }
}

template <int NV>
static void gemm_columns(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int M, int K,
                         bool accumulate) {
  for (int m = 0; m < M; m += kRowBlock) {
    int k0 = 0;
    do {  // at least once: K = 0 still writes C
      const int kb = K - k0 < kGemmKBlock ? K - k0 : kGemmKBlock;
      micro_kernel<kRowBlock, NV>(A + m * lda + k0, lda, B + static_cast<int64_t>(k0) * ldb, ldb, C + m * ldc, ldc,
                                  kb, accumulate || k0 > 0);
      k0 += kGemmKBlock;
    } while (k0 < K);
  }
}

// C[M x N] (+)= A[M x K] B[K x N]; M a multiple of 4 (tiles are padded), N a multiple of 16.
static void gemm(const float* A, int lda, const float* B, int ldb, float* C, int ldc, int M, int N, int K,
                 bool accumulate) {
  int n0 = 0, nv = N / kGemmChunk;
  while (nv > 0) {
    const int chunk = nv <= kMaxChunk ? nv : (kMaxChunk < 4 ? kMaxChunk : 4);
    switch (chunk) {
      case 1: gemm_columns<1>(A, lda, B + n0, ldb, C + n0, ldc, M, K, accumulate); break;
      case 2: gemm_columns<2>(A, lda, B + n0, ldb, C + n0, ldc, M, K, accumulate); break;
      case 3: gemm_columns<3>(A, lda, B + n0, ldb, C + n0, ldc, M, K, accumulate); break;
      case 4: gemm_columns<4>(A, lda, B + n0, ldb, C + n0, ldc, M, K, accumulate); break;
      case 5: gemm_columns<5>(A, lda, B + n0, ldb, C + n0, ldc, M, K, accumulate); break;
      default: gemm_columns<6>(A, lda, B + n0, ldb, C + n0, ldc, M, K, accumulate); break;
    }
    n0 += chunk * kGemmChunk;
    nv -= chunk;
  }
}

// exp(x) for x <= 0 (softmax arguments after subtracting the row max), vectorizable: no calls, no
// branches.  2^n * 2^f with a degree-6 polynomial on |f*ln2| <= 0.35: relative error ~2e-7.
static inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest
  const float g = (t - n) * 0.693147180559945309f;
  float p = 1.0f / 720.0f;
  p = p * g + 1.0f / 120.0f;
  p = p * g + 1.0f / 24.0f;
  p = p * g + 1.0f / 6.0f;
  p = p * g + 0.5f;
  p = p * g + 1.0f;
  p = p * g + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// exp(x) for x <= 0 to about 1 ulp (the backward's softmax, whose P enters dv = P^T dO directly, so its
// error must match torch's ~1 ulp expf): Cody-Waite reduction x = n ln2 + r with ln2 split in two (n * the
// high part is exact), then Cephes' degree-5 minimax polynomial for exp(r) - 1 - r on |r| <= ln2 / 2.
// exp_nonpositive instead rounds x * log2(e) first, which costs up to |x| * 2^-24 of relative error.
static inline float exp_nonpositive_precise(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// exp_nonpositive on a whole native vector (the same arithmetic lane by lane).
static inline vnat vexp_nonpositive(vnat x) {
  typedef int32_t vint __attribute__((vector_size(sizeof(vnat))));
  const vnat lo = vnat{} - 87.0f;
  x = x < lo ? lo : x;
  const vnat t = x * 1.44269504088896341f;
  const vnat n = (t + 12582912.0f) - 12582912.0f;
  const vnat g = (t - n) * 0.693147180559945309f;
  vnat p = vnat{} + 1.0f / 720.0f;
  p = p * g + 1.0f / 120.0f;
  p = p * g + 1.0f / 24.0f;
  p = p * g + 1.0f / 6.0f;
  p = p * g + 0.5f;
  p = p * g + 1.0f;
  p = p * g + 1.0f;
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vnat scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

static inline vnat vmaximum(vnat a, vnat b) { return a > b ? a : b; }

// Tree reductions over the lanes of one vector.
static inline float hmax(vnat v) {
  float a[kLanes];
  std::memcpy(a, &v, sizeof a);
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) a[i] = a[i] > a[i + w] ? a[i] : a[i + w];
  return a[0];
}
static inline float hsum(vnat v) {
  float a[kLanes];
  std::memcpy(a, &v, sizeof a);
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) a[i] += a[i + w];
  return a[0];
}

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS
