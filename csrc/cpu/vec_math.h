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

// Every loop over a register block's rows or chunks carries VL3FAST_UNROLL: unrolled at once, its accumulator
// array becomes registers (GCC's scalar replacement of aggregates runs before its own complete unrolling).
// Without it GCC 12 kept the accumulators of the AVX2 build's out-of-line bcast_kernel<6, 1> in a stack array,
// 12 ymm stores per contraction term (seen in the disassembly), and the AVX2 level ran image896 at 0.75x
// (forward) and 0.63x (forward+backward) torch's SDPA; unrolled: 1.7x / 2.1x faster (one core of an AMD EPYC
// Zen 4), the same results bit for bit.  The bf16 dot blocks (bf16_dot.h) carry it too.
#define VL3FAST_UNROLL _Pragma("GCC unroll 32")

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
  VL3FAST_UNROLL
  for (int r = 0; r < RI; ++r)
    VL3FAST_UNROLL
    for (int n = 0; n < NN; ++n) c[r][n] = vnat{};
  for (int kk = 0; kk < K; ++kk) {
    vnat b[NN];
    VL3FAST_UNROLL
    for (int n = 0; n < NN; ++n) b[n] = vload(B + static_cast<int64_t>(kk) * ldb + n * kLanes);
    VL3FAST_UNROLL
    for (int r = 0; r < RI; ++r) {
      const vnat a = vbroadcast(A + r * lda + kk);
      VL3FAST_UNROLL
      for (int n = 0; n < NN; ++n) c[r][n] += a * b[n];
    }
  }
  VL3FAST_UNROLL
  for (int r = 0; r < RI; ++r)
    VL3FAST_UNROLL
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

// exp(x) for x <= 0 to about 1 ulp (the backward's softmax, whose P enters dv = P^T dO directly, so its
// error must match torch's ~1 ulp expf): Cody-Waite reduction x = n ln2 + r with ln2 split in two (n * the
// high part is exact), then Cephes' degree-5 minimax polynomial for exp(r) - 1 - r on |r| <= ln2 / 2.
// (Rounding x * log2(e) first instead costs up to |x| * 2^-24 of relative error.)  On whole native vectors: the
// backward's softmax calls it so; a scalar function called inside an `omp simd` loop is not inlined there, and
// that loop ran one exp call per element (~a quarter of the bf16 backward's time, measured by perf on image896).
static inline vnat vexp_nonpositive_precise(vnat x) {
  typedef int32_t vint __attribute__((vector_size(sizeof(vnat))));
  const vnat lo = vnat{} - 87.0f;
  x = x < lo ? lo : x;  // NaN x: the comparison is false, x stays NaN
  const vnat n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const vnat r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  vnat p = vnat{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vnat scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// The same on one float (a row's last < kLanes elements): one place for the arithmetic.
static inline float exp_nonpositive_precise(float x) {
  const vnat e = vexp_nonpositive_precise(vnat{} + x);
  return e[0];
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

// ------------------------------------------------------------------ broadcast-A GEMM (flash forward)
// C[M x N] = A[M x K] B[K x N] (+ C, its columns scaled), for the forward with queries along the vector lanes
// (attention_kernel.h).  A is only ever broadcast, one element at a time, so it may have any layout: element
// (r, k) is A[r * lda + k * ldk] (a row-major K tile, or V read as V^T without a transpose).  B and C are
// row-major, N a multiple of kGemmChunk.  Register block: kBcastRows rows x kBcastChunks chunks of 16 floats.
#if defined(__AVX512F__)
constexpr int kBcastRows = 6;    // 6 x 4 zmm = 24 accumulators + 4 B vectors + 1 broadcast of 32 registers
constexpr int kBcastChunks = 4;  // (a last panel of 5 or 6 chunks runs whole, 4 rows at a time: see bcast_rows)
#elif defined(__AVX2__)
constexpr int kBcastRows = 6;    // 6 x 2 ymm = 12 accumulators + 2 B vectors + 1 broadcast of 16 registers
constexpr int kBcastChunks = 1;
#else
constexpr int kBcastRows = 2;    // 2 x 4 xmm = 8 accumulators + 4 B vectors + 1 broadcast of 16 registers
constexpr int kBcastChunks = 1;
#endif

// Rows per register block for a panel of NV chunks: 4 x 5 or 4 x 6 zmm (N = 80, 96 in one panel) still fit.
template <int NV>
constexpr int bcast_rows() {
  return NV <= kBcastChunks ? kBcastRows : 4;
}

// What a block does with C: kStore (C = A B), kAdd (C += A B), kScaleAdd (C = C * aux + A B: aux scales
// column by column), kStoreColMax (C = A B, and aux[n] = max(aux[n], max over the block's rows of C[., n])).
// A B is summed from zero in registers and C added after it, and bcast_panel splits K into equal chunks of at
// most `kblock` terms (the first chunk in kMode, the rest as kAdd; the column max after the last): the rounding
// of a long serial chain over K grows with K.  The caller chooses kblock per product (attention_kernel.h says
// which and why; vec_math's gemm blocks its K by kGemmKBlock for the same reason).
enum class BcastMode { kStore, kAdd, kScaleAdd, kStoreColMax };

// One term of the contraction for a register block: c[r][.] += A(r, k) * B's row k (row b_row; A(r, k) at
// a[r * lda]).  Its own B registers, so a caller running two accumulator sets keeps at most NN B vectors live.
template <int RI, int NN>
static inline void bcast_step(vnat (&c)[RI][NN], const float* a, int64_t lda, const float* b_row) {
  vnat b[NN];
  VL3FAST_UNROLL
  for (int n = 0; n < NN; ++n) b[n] = vload(b_row + n * kLanes);
  VL3FAST_UNROLL
  for (int r = 0; r < RI; ++r) {
    const vnat ar = vbroadcast(a + r * lda);
    VL3FAST_UNROLL
    for (int n = 0; n < NN; ++n) c[r][n] += ar * b[n];
  }
}

// kStoreColMax's epilogue: aux[n] = max(aux[n], max over the block's rows of c[., n]).
template <int RI, int NN>
static inline void block_column_max(const vnat (&c)[RI][NN], float* aux) {
  VL3FAST_UNROLL
  for (int n = 0; n < NN; ++n) {
    vnat mx = vload(aux + n * kLanes);
    VL3FAST_UNROLL
    for (int r = 0; r < RI; ++r) mx = vmaximum(mx, c[r][n]);
    vstore(aux + n * kLanes, mx);
  }
}

template <int RI, int NV, BcastMode kMode>
static inline void bcast_kernel(const float* A, int64_t lda, int64_t ldk, const float* B, int ldb, float* C, int ldc,
                                int K, float* aux) {
  constexpr int NN = NV * kGemmChunk / kLanes;
  vnat c[RI][NN];
  VL3FAST_UNROLL
  for (int r = 0; r < RI; ++r)
    VL3FAST_UNROLL
    for (int n = 0; n < NN; ++n) c[r][n] = vnat{};
  const float* a = A;
  const float* b_row = B;
  for (int kk = 0; kk < K; ++kk, a += ldk, b_row += ldb) bcast_step<RI, NN>(c, a, lda, b_row);
  VL3FAST_UNROLL
  for (int n = 0; n < NN; ++n) {
    const vnat s = kMode == BcastMode::kScaleAdd ? vload(aux + n * kLanes) : vnat{};
    VL3FAST_UNROLL
    for (int r = 0; r < RI; ++r) {
      float* cr = C + r * ldc + n * kLanes;
      if constexpr (kMode == BcastMode::kAdd) vstore(cr, vload(cr) + c[r][n]);
      else if constexpr (kMode == BcastMode::kScaleAdd) vstore(cr, vload(cr) * s + c[r][n]);
      else vstore(cr, c[r][n]);
    }
  }
  if constexpr (kMode == BcastMode::kStoreColMax) block_column_max<RI, NN>(c, aux);
}

// The rows of one column panel: whole register blocks, then the remaining rows in one block.
template <int NV, BcastMode kMode, int R = bcast_rows<NV>() - 1>
static inline void bcast_tail(int rows, const float* A, int64_t lda, int64_t ldk, const float* B, int ldb, float* C,
                              int ldc, int K, float* aux) {
  if constexpr (R > 0) {
    if (rows == R) return bcast_kernel<R, NV, kMode>(A, lda, ldk, B, ldb, C, ldc, K, aux);
    bcast_tail<NV, kMode, R - 1>(rows, A, lda, ldk, B, ldb, C, ldc, K, aux);
  }
}

// The length of bcast_gemm's contraction chunks: K in equal chunks of at most kblock terms (kblock 40 takes
// K = 72 as 2 x 36, not 40 + 32), the last one possibly shorter.
static inline int bcast_chunk_step(int K, int kblock) {
  const int chunks = (K + kblock - 1) / kblock;
  return (K + chunks - 1) / chunks;
}

// For every column n of C's first `rows` rows: aux[n] = max(aux[n], C[., n]) (kStoreColMax after the last chunk).
template <int NV>
static inline void bcast_column_max(const float* C, int ldc, int rows, float* aux) {
  for (int r = 0; r < rows; ++r)
    for (int n = 0; n < NV * kGemmChunk; n += kLanes) vstore(aux + n, vmaximum(vload(aux + n), vload(C + r * ldc + n)));
}

template <int NV, BcastMode kMode>
static void bcast_panel(const float* A, int64_t lda, int64_t ldk, const float* B, int ldb, float* C, int ldc, int M,
                        int K, float* aux, int kblock) {
  constexpr int RI = bcast_rows<NV>();
  if (K > kblock) {  // first chunk as kMode (kStoreColMax: plain store), the rest added, then the max
    constexpr BcastMode kFirst = kMode == BcastMode::kStoreColMax ? BcastMode::kStore : kMode;
    const int step = bcast_chunk_step(K, kblock);
    bcast_panel<NV, kFirst>(A, lda, ldk, B, ldb, C, ldc, M, step, aux, step);
    for (int k0 = step; k0 < K; k0 += step) {
      const int kb = K - k0 < step ? K - k0 : step;
      bcast_panel<NV, BcastMode::kAdd>(A + k0 * ldk, lda, ldk, B + static_cast<int64_t>(k0) * ldb, ldb, C, ldc, M,
                                       kb, nullptr, step);
    }
    if constexpr (kMode == BcastMode::kStoreColMax) bcast_column_max<NV>(C, ldc, M, aux);
    return;
  }
  int m = 0;
  for (; m + RI <= M; m += RI) bcast_kernel<RI, NV, kMode>(A + m * lda, lda, ldk, B, ldb, C + m * ldc, ldc, K, aux);
  if (m < M) bcast_tail<NV, kMode>(M - m, A + m * lda, lda, ldk, B, ldb, C + m * ldc, ldc, K, aux);
}

#if defined(__AVX512F__)
// Two chunks of the contraction at once (AVX-512): accumulator set a sums the terms [0, step), set b the terms
// [step, step + kb) (kb <= step) in the same k loop, and the epilogue computes C (op)= a, then + b: the
// rounding of the chunks run one after the other (bcast_panel), only the schedule differs.  Why: a head-dim
// contraction in 2 chunks run one after the other measured ~20% below one chain of the same length (the
// forward's q.k^T tile, D = 72: 85-91 against 106-110 GFLOP/s of one 72-term chain, one core of an AMD EPYC
// Zen 4; benchmarks/bcast_tile.cpp), while both chunks in one register block ran 100-108.  Register block:
// kPairRows x kPairChunks zmm per set, 2 x 5 x 2 = 20 accumulators + 2 B vectors + 1 broadcast.
constexpr int kPairRows = 5;
constexpr int kPairChunks = 2;  // bcast_gemm takes panels of 2 chunks, then 1 (N is a multiple of 16)

template <int RI, int NV, BcastMode kMode>
static inline void bcast_pair_kernel(const float* A, int64_t lda, int64_t ldk, const float* B, int ldb, float* C,
                                     int ldc, int step, int kb, float* aux) {
  constexpr int NN = NV * kGemmChunk / kLanes;
  vnat ca[RI][NN], cb[RI][NN];
  VL3FAST_UNROLL
  for (int r = 0; r < RI; ++r)
    VL3FAST_UNROLL
    for (int n = 0; n < NN; ++n) ca[r][n] = cb[r][n] = vnat{};
  const int64_t a_off = step * ldk, b_off = static_cast<int64_t>(step) * ldb;
  const float* a = A;
  const float* b_row = B;
  int kk = 0;
  for (; kk < kb; ++kk, a += ldk, b_row += ldb) {  // term kk of chunk a, then of chunk b
    bcast_step<RI, NN>(ca, a, lda, b_row);
    bcast_step<RI, NN>(cb, a + a_off, lda, b_row + b_off);
  }
  for (; kk < step; ++kk, a += ldk, b_row += ldb) bcast_step<RI, NN>(ca, a, lda, b_row);  // chunk b shorter
  VL3FAST_UNROLL
  for (int n = 0; n < NN; ++n) {
    const vnat s = kMode == BcastMode::kScaleAdd ? vload(aux + n * kLanes) : vnat{};
    VL3FAST_UNROLL
    for (int r = 0; r < RI; ++r) {
      float* cr = C + r * ldc + n * kLanes;
      vnat v = ca[r][n];
      if constexpr (kMode == BcastMode::kAdd) v = vload(cr) + v;
      else if constexpr (kMode == BcastMode::kScaleAdd) v = vload(cr) * s + v;
      v = v + cb[r][n];
      vstore(cr, v);
      ca[r][n] = v;
    }
  }
  if constexpr (kMode == BcastMode::kStoreColMax) block_column_max<RI, NN>(ca, aux);
}

template <int NV, BcastMode kMode, int R = kPairRows - 1>
static inline void bcast_pair_tail(int rows, const float* A, int64_t lda, int64_t ldk, const float* B, int ldb,
                                   float* C, int ldc, int step, int kb, float* aux) {
  if constexpr (R > 0) {
    if (rows == R) return bcast_pair_kernel<R, NV, kMode>(A, lda, ldk, B, ldb, C, ldc, step, kb, aux);
    bcast_pair_tail<NV, kMode, R - 1>(rows, A, lda, ldk, B, ldb, C, ldc, step, kb, aux);
  }
}

template <int NV, BcastMode kMode>
static void bcast_pair_panel(const float* A, int64_t lda, int64_t ldk, const float* B, int ldb, float* C, int ldc,
                             int M, int step, int kb, float* aux) {
  int m = 0;
  for (; m + kPairRows <= M; m += kPairRows)
    bcast_pair_kernel<kPairRows, NV, kMode>(A + m * lda, lda, ldk, B, ldb, C + m * ldc, ldc, step, kb, aux);
  if (m < M) bcast_pair_tail<NV, kMode>(M - m, A + m * lda, lda, ldk, B, ldb, C + m * ldc, ldc, step, kb, aux);
}

// One panel of NV (<= kPairChunks) column chunks, K in chunks of bcast_chunk_step(K, kblock) terms taken two at
// a time; the first pair in kMode (kStoreColMax: the max with it when it is the only pair, else after the last),
// the rest added; an odd last chunk runs alone (bcast_panel, kAdd).
template <int NV, BcastMode kMode>
static void bcast_pairs(const float* A, int64_t lda, int64_t ldk, const float* B, int ldb, float* C, int ldc, int M,
                        int K, float* aux, int kblock) {
  constexpr BcastMode kFirst = kMode == BcastMode::kStoreColMax ? BcastMode::kStore : kMode;
  const int step = bcast_chunk_step(K, kblock);
  if (K <= 2 * step) return bcast_pair_panel<NV, kMode>(A, lda, ldk, B, ldb, C, ldc, M, step, K - step, aux);
  bcast_pair_panel<NV, kFirst>(A, lda, ldk, B, ldb, C, ldc, M, step, step, aux);
  for (int k0 = 2 * step; k0 < K; k0 += 2 * step) {
    const float* Ak = A + k0 * ldk;
    const float* Bk = B + static_cast<int64_t>(k0) * ldb;
    const int left = K - k0;
    if (left > step) bcast_pair_panel<NV, BcastMode::kAdd>(Ak, lda, ldk, Bk, ldb, C, ldc, M, step,
                                                           left - step < step ? left - step : step, nullptr);
    else bcast_panel<NV, BcastMode::kAdd>(Ak, lda, ldk, Bk, ldb, C, ldc, M, left, nullptr, left);
  }
  if constexpr (kMode == BcastMode::kStoreColMax) bcast_column_max<NV>(C, ldc, M, aux);
}
#endif

// C[M x N] (op)= A B, op given by kMode, K in chunks of <= kblock; aux: kScaleAdd's column scales or
// kStoreColMax's running column max (N floats), else unused (nullptr).  Column panels outer, rows inner: one
// panel of B (K x 16 * kBcastChunks) stays in L1 while A streams.
template <BcastMode kMode>
static void bcast_gemm(const float* A, int64_t lda, int64_t ldk, const float* B, int ldb, float* C, int ldc, int M,
                       int N, int K, float* aux, int kblock) {
#if defined(__AVX512F__)
  if (K > kblock) {  // several chunks: two at a time (bcast_pairs), in panels of kPairChunks column chunks
    for (int n0 = 0; n0 < N; n0 += kPairChunks * kGemmChunk) {
      float* x = aux != nullptr ? aux + n0 : nullptr;
      if (N - n0 >= kPairChunks * kGemmChunk)
        bcast_pairs<kPairChunks, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K, x, kblock);
      else
        bcast_pairs<1, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K, x, kblock);
    }
    return;
  }
#endif
  for (int n0 = 0; n0 < N;) {
#if defined(__AVX512F__)
    const int left = (N - n0) / kGemmChunk;
    const int nv = left <= 6 ? left : kBcastChunks;
#else
    const int nv = 1;
#endif
    float* x = aux != nullptr ? aux + n0 : nullptr;
    switch (nv) {
      case 1: bcast_panel<1, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K, x, kblock); break;
#if defined(__AVX512F__)
      case 2: bcast_panel<2, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K, x, kblock); break;
      case 3: bcast_panel<3, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K, x, kblock); break;
      case 4: bcast_panel<4, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K, x, kblock); break;
      case 5: bcast_panel<5, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K, x, kblock); break;
      default: bcast_panel<6, kMode>(A, lda, ldk, B + n0, ldb, C + n0, ldc, M, K, x, kblock); break;
#else
      default: break;
#endif
    }
    n0 += nv * kGemmChunk;
  }
}
static_assert(kBcastChunks == 1 || kBcastChunks == 4, "bcast_gemm's panel switch");

// 2^t for t <= 0 (softmax arguments in log2 units, after subtracting the running max), vectorized; NaN stays
// NaN.  2^n * 2^f, n = round(t), |f| <= 1/2, 2^f by its degree-7 Taylor series in f*ln2: relative error
// ~1e-8 before rounding (a degree-6 series would be ~2e-7).  Below -126 the result is 2^-126 * 2^f
// (~1e-38, i.e. 0 for a softmax weight).  AVX-512: vrndscaleps / vscalefps; else the exponent bits directly.
static inline vnat vexp2_nonpositive(vnat t) {
#if defined(__AVX512F__)
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-126.0f), (__m512)t);  // NaN t: max_ps returns t
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vnat f = (vnat)x - (vnat)n;
#else
  const vnat lo = vnat{} - 126.0f;
  const vnat x = t < lo ? lo : t;  // NaN t: the comparison is false, x = t
  const vnat n = (x + 12582912.0f) - 12582912.0f;  // round to nearest
  const vnat f = x - n;
#endif
  vnat p = vnat{} + 1.5252733804059841e-05f;  // ln2^k / k!, k = 7 .. 0
  p = p * f + 1.5403530393381609e-04f;
  p = p * f + 1.3333558146428443e-03f;
  p = p * f + 9.6181291076284772e-03f;
  p = p * f + 5.5504108664821580e-02f;
  p = p * f + 2.4022650695910071e-01f;
  p = p * f + 6.9314718055994531e-01f;
  p = p * f + 1.0f;
#if defined(__AVX512F__)
  return (vnat)_mm512_scalef_ps((__m512)p, n);
#else
  typedef int32_t vint __attribute__((vector_size(sizeof(vnat))));
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vnat scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
#endif
}

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS
