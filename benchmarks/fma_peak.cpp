// Single-core peak of the vector multiply-add units: 24 independent zmm accumulator chains, fp32 FMA
// (vfmadd231ps, 32 FLOP each) and, where the CPU has AVX512-BF16, bf16 pair dot products (vdpbf16ps,
// 64 FLOP each).  The attention kernel's "% of FMA peak" divides by these numbers (benchmarks/results/
// README.md).  On a shared machine each measurement is the fastest of many ~1 ms repeats, so a repeat
// that ran without preemption sets it.
//   g++ -O3 -mavx512f -mavx512bf16 benchmarks/fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak
#include <immintrin.h>

#include <chrono>
#include <cstdio>

constexpr int kChains = 24;
constexpr long kIters = 20000;  // per repeat: 24 * 20000 instructions, ~0.5 ms at 1 per cycle

template <typename Step>
static double best_seconds(Step step, int repeats) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = s < best ? s : best;
  }
  return best;
}

static float sink;

// Seconds of the fastest repeat of kIters rounds of `step` on each of the kChains accumulators.
template <typename Step>
static double chains_seconds(Step step) {
  return best_seconds(
      [&] {
        __m512 acc[kChains];
        for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(static_cast<float>(c));
        for (long i = 0; i < kIters; ++i)
#pragma GCC unroll 24
          for (int c = 0; c < kChains; ++c) acc[c] = step(acc[c]);
        float s = 0;
        for (int c = 0; c < kChains; ++c) s += _mm512_reduce_add_ps(acc[c]);
        sink += s;
      },
      400);
}

int main() {
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-7f);
  const double t_fma = chains_seconds([&](__m512 x) { return _mm512_fmadd_ps(x, a, b); });
  std::printf("fp32 FMA (zmm, %d chains): %.1f GFLOP/s per core\n", kChains, 32.0 * kChains * kIters / t_fma / 1e9);
#if defined(__AVX512BF16__)
  if (__builtin_cpu_supports("avx512bf16")) {
    const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3380);
    const double t_dot = chains_seconds([&](__m512 acc) { return _mm512_dpbf16_ps(acc, x, y); });
    std::printf("bf16 dot (vdpbf16ps zmm, %d chains): %.1f GFLOP/s per core\n", kChains,
                64.0 * kChains * kIters / t_dot / 1e9);
  } else {
    std::printf("bf16 dot: this CPU has no AVX512-BF16\n");
  }
#endif
  return sink == 12345.0f;
}
