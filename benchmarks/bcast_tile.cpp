// The fp32 forward's three pieces on one hot (64-key x 256-query) tile, head dim 72, one core: S^T = K Q^T
// (bcast_gemm, head dim in the kernel's chunks, kHeadDimChunk), the same in one 72-term chain (the speed the
// chunks cost, for comparison), the softmax pass (2^(S log2 e - m) down the columns), O^T = O^T alpha + V^T P^T.
// Everything from csrc/cpu (vec_math.h, attention_kernel.h), so it times the code the kernel runs, without the
// K/V loads and rotations.  Each number: the fastest of 5 rounds of 2000 tiles, thread-CPU clock.
//   g++ -O3 -fopenmp -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c -mprefer-vector-width=512 \
//       -mavx512bf16 -DVL3FAST_ISA_NS=avx512bf16 -Icsrc/include -Icsrc benchmarks/bcast_tile.cpp -o /tmp/bcast_tile
//   /tmp/bcast_tile
#include <time.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cpu/attention_kernel.h"

using namespace vl3fast::cpu::VL3FAST_ISA_NS;

#define BCAST_TILE_STR2(x) #x
#define BCAST_TILE_STR(x) BCAST_TILE_STR2(x)

static double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

template <typename Step>
static double best_seconds_per_tile(Step step) {
  constexpr int kTiles = 2000;
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    const double t0 = thread_seconds();
    for (int i = 0; i < kTiles; ++i) step();
    const double s = (thread_seconds() - t0) / kTiles;
    best = s < best ? s : best;
  }
  return best;
}

int main() {
  constexpr int D = 72, Dp = 80, NQ = BQF, NK = BK;  // the forward's tile (attention_tiles.h)
  std::vector<float> qt_DQ(D * NQ), k_KDp(NK * Dp), v_KDp(NK * Dp), s_KQ(NK * NQ), o_DQ(D * NQ);
  std::vector<float> colmax_Q(NQ), m_Q(NQ, 1.0f), l_Q(NQ, 1.0f), alpha_Q(NQ, 0.9f);
  std::srand(1);
  for (auto* x : {&qt_DQ, &k_KDp, &v_KDp})
    for (float& e : *x) e = std::rand() / static_cast<float>(RAND_MAX) - 0.5f;

  auto qk = [&](int kblock) {
    for (int i = 0; i < NQ; ++i) colmax_Q[i] = -INFINITY;
    bcast_gemm<BcastMode::kStoreColMax>(k_KDp.data(), Dp, 1, qt_DQ.data(), NQ, s_KQ.data(), NQ, NK, NQ, D,
                                        colmax_Q.data(), kblock);
  };
  const double t_qk = best_seconds_per_tile([&] { qk(kHeadDimChunk); });
  const double t_qk_chain = best_seconds_per_tile([&] { qk(D); });
  const double t_softmax = best_seconds_per_tile([&] {
    const vnat log2e = vnat{} + 1.44269504088896341f;
    for (int i = 0; i < NQ; i += kLanes) {
      const vnat mi = vload(m_Q.data() + i);
      vnat sum = vnat{};
      float* sj = s_KQ.data() + i;
      for (int j = 0; j < NK; ++j, sj += NQ) {
        const vnat e = vexp2_nonpositive(vload(sj) * log2e - mi);
        vstore(sj, e);
        sum += e;
      }
      vstore(l_Q.data() + i, vload(l_Q.data() + i) * vload(alpha_Q.data() + i) + sum);
    }
  });
  const double t_pv = best_seconds_per_tile([&] {
    bcast_gemm<BcastMode::kScaleAdd>(v_KDp.data(), 1, Dp, s_KQ.data(), NQ, o_DQ.data(), NQ, D, NQ, NK,
                                     alpha_Q.data(), kTileChunk);
  });
  const double flop = 2.0 * NK * NQ * D;  // one product
  std::printf("one %d-key x %d-query tile, head dim %d (ISA build %s)\n", NK, NQ, D, BCAST_TILE_STR(VL3FAST_ISA_NS));
  std::printf("  q.k^T, chunks of <= %d: %6.2f us  %6.1f GFLOP/s\n", kHeadDimChunk, t_qk * 1e6, flop / t_qk / 1e9);
  std::printf("  q.k^T, one chain:       %6.2f us  %6.1f GFLOP/s\n", t_qk_chain * 1e6, flop / t_qk_chain / 1e9);
  std::printf("  softmax pass:           %6.2f us\n", t_softmax * 1e6);
  std::printf("  p.v:                    %6.2f us  %6.1f GFLOP/s\n", t_pv * 1e6, flop / t_pv / 1e9);
  const double t = t_qk + t_softmax + t_pv;
  std::printf("  tile:                   %6.2f us  %6.1f GFLOP/s\n", t * 1e6, 2 * flop / t / 1e9);
  return 0;
}
