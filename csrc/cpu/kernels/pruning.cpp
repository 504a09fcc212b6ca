// Differential Frame Pruner on the CPU (compiled once per ISA level; see isa.h).
//
// frame_keep_mask: one pass over pixel_values.  OpenMP splits (video, block of consecutive merged
// tokens) units; each walks its block through time, so the previous frame's block (runs of
// K = m*m*row_width values) was read one step earlier (cache-hot) and DRAM sees every pixel once.  The per-row sum follows torch's CPU
// float32 summation order (pruning.h) with 4 x V lane accumulators the compiler vectorizes.
// keep_compaction: per-frame counts, a scan over the F frames, then a parallel per-frame scatter.
#include <cmath>

#include "../isa.h"
#include "../scalar_types.h"
#include "vl3fast/pruning.h"

namespace vl3fast::cpu::VL3FAST_ISA_NS {
namespace {

// Adds |a[base + e] - b[base + e]| into dst[e] for e < N (a plain loop the compiler vectorizes).
template <int N, typename T>
static inline void add_abs_diff(float* __restrict dst, const T* __restrict a, const T* __restrict b, int64_t base) {
  const T* pa = a + base;
  const T* pb = b + base;
#pragma omp simd
  for (int e = 0; e < N; ++e) dst[e] += std::fabs(to_float(pa[e]) - to_float(pb[e]));
}

// sum_k |a[k] - b[k]| over K values in torch's float32 cascade order with V lanes (pruning.h).
// Stream s = k*V + l of ilp row i reads element 4*V*i + s, so one ilp row is 4V contiguous values
// and each cascade level is a flat float[4V] (stream-major, like torch's acc[level][k] vectors).
template <int V, typename T>
static float torch_order_abs_diff_sum(const T* a, const T* b, int64_t K, const TorchSumOrder& o) {
  constexpr int S = 4 * V;
  alignas(64) float acc[4][S];  // [cascade level][stream]
  for (int j = 0; j < 4; ++j)
    for (int s = 0; s < S; ++s) acc[j][s] = 0.0f;
  int64_t i = 0;
  while (i + o.step <= o.nilp) {
    alignas(64) float l0[S];  // level 0 is zero at the start of every step
    for (int s = 0; s < S; ++s) l0[s] = 0.0f;
    for (const int64_t end = i + o.step; i < end; ++i) add_abs_diff<S>(l0, a, b, S * i);
    const int top = cascade_top_level(i, o.level_power);
    for (int s = 0; s < S; ++s) acc[1][s] += l0[s];
    for (int j = 2; j <= top; ++j)
      for (int s = 0; s < S; ++s) {
        acc[j][s] += acc[j - 1][s];
        acc[j - 1][s] = 0.0f;
      }
  }
  for (; i < o.nilp; ++i) add_abs_diff<S>(acc[0], a, b, S * i);
  for (int j = 1; j < 4; ++j)
    for (int s = 0; s < S; ++s) acc[0][s] += acc[j][s];
  for (int64_t v = 4 * o.nilp; v < o.nvec; ++v) add_abs_diff<V>(acc[0], a, b, v * V);  // into stream 0
  for (int k = 1; k < 4; ++k)
    for (int l = 0; l < V; ++l) acc[0][l] += acc[0][k * V + l];
  float total = 0.0f;
  for (int64_t e = o.nvec * V; e < K; ++e) total += std::fabs(to_float(a[e]) - to_float(b[e]));
  for (int l = 0; l < V; ++l) total += acc[0][l];
  return total;
}

template <typename T>
static float token_diff(const T* cur, const T* prev, int64_t K, const TorchSumOrder& o) {
  float sum;
  if (o.lanes == 8) sum = torch_order_abs_diff_sum<8>(cur, prev, K, o);
  else sum = torch_order_abs_diff_sum<1>(cur, prev, K, o);
  // mean = sum / K (torch: sum_out(...).div_(K)), then * 255, each rounded to float32.
  const float mean = sum / static_cast<float>(K);
  return mean * 255.0f;
}

constexpr int64_t kBlockBytes = 96 * 1024;  // per frame; two frames' blocks stay in L2

static int64_t block_tokens(int64_t token_bytes) {
  const int64_t b = kBlockBytes / token_bytes;
  return b > 1 ? b : 1;
}

template <typename T>
static void frame_keep_typed(const FrameKeepParams& p) {
  const T* pixels = static_cast<const T*>(p.pixels);
  const float thr = static_cast<float>(p.threshold);
  const float rule_diff = static_cast<float>(p.threshold + 1.0);
#pragma omp parallel
  {
    for (int64_t it = 0; it < p.num_items; ++it) {
      const int64_t* row = p.item_table + it * kGridFields;
      const int64_t t = row[kGridT], m = row[kGridMerge], n = tokens_per_frame(row);
      const int64_t K = m * m * p.row_width;
      const int64_t frame_rows = n * m * m;  // pixel rows per frame
      const TorchSumOrder o = torch_sum_order(K, p.sum_lanes);
      // A work unit is a block of B consecutive merged tokens (one contiguous run of about
      // kBlockBytes per frame) walked through time: streaming-friendly, and the previous frame's
      // block is still in L2 when it is read again as `prev`.
      const int64_t B = block_tokens(K * static_cast<int64_t>(sizeof(T)));
      const int64_t blocks = (n + B - 1) / B;
#pragma omp for schedule(static) nowait
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t j0 = b * B, j1 = j0 + B < n ? j0 + B : n;
        for (int64_t j = j0; j < j1; ++j) {
          p.keep[row[kGridTokenOffset] + j] = true;  // frame 0 (or the only frame) is kept by rule
          if (p.diff) p.diff[row[kGridTokenOffset] + j] = rule_diff;
        }
        const T* prev_block = pixels + token_first_patch(row, j0) * p.row_stride;
        for (int64_t f = 1; f < t; ++f) {
          const T* cur_block = prev_block + frame_rows * p.row_stride;
          for (int64_t j = j0; j < j1; ++j) {
            const float d = token_diff(cur_block + (j - j0) * K, prev_block + (j - j0) * K, K, o);
            const int64_t tok = row[kGridTokenOffset] + f * n + j;
            p.keep[tok] = d > thr;  // NaN compares false: the token is dropped, as in torch
            if (p.diff) p.diff[tok] = d;
          }
          prev_block = cur_block;
        }
      }
    }
#pragma omp barrier
    // min_tokens: a starved frame keeps its first min_tokens merged tokens.
#pragma omp for schedule(static)
    for (int64_t f = 0; f < p.num_frames; ++f) {
      const FrameSpan s = frame_span(p.item_table, p.num_items, f);
      int64_t kept = 0;
      for (int64_t i = s.begin; i < s.end; ++i) kept += p.keep[i] ? 1 : 0;
      if (kept < p.min_tokens)
        for (int64_t i = s.begin; i < s.begin + p.min_tokens && i < s.end; ++i) p.keep[i] = true;
    }
  }
}

}  // namespace

void frame_keep_mask(const FrameKeepParams& p) {
  VL3FAST_DISPATCH_FLOATING(p.dtype, float, bf16, f16, "frame_keep_mask", [&] { frame_keep_typed<scalar_t>(p); });
}

void keep_compaction(const KeepCompactParams& p) {
  const int64_t F = p.num_frames;
#pragma omp parallel for schedule(static)
  for (int64_t f = 0; f < F; ++f) {
    const FrameSpan s = frame_span(p.item_table, p.num_items, f);
    int64_t kept = 0;
    for (int64_t i = s.begin; i < s.end; ++i) kept += p.keep[i] ? 1 : 0;
    p.token_cu[f + 1] = static_cast<int32_t>(kept);
    p.patch_cu[f + 1] = static_cast<int32_t>(kept * s.merge * s.merge);
  }
  p.token_cu[0] = 0;
  p.patch_cu[0] = 0;
  for (int64_t f = 0; f < F; ++f) {  // F is small (frames, not tokens): a serial scan
    p.token_cu[f + 1] += p.token_cu[f];
    p.patch_cu[f + 1] += p.patch_cu[f];
  }
  const int64_t kept_tokens = p.token_cu[F], kept_patches = p.patch_cu[F];
#pragma omp parallel
  {
#pragma omp for schedule(static) nowait
    for (int64_t f = 0; f < F; ++f) {
      const FrameSpan s = frame_span(p.item_table, p.num_items, f);
      const int64_t mm = s.merge * s.merge;
      const int64_t w = p.item_table[s.item * kGridFields + kGridW];
      int64_t out = p.token_cu[f], patch_out = p.patch_cu[f];
      for (int64_t i = s.begin; i < s.end; ++i) {
        if (!p.keep[i]) continue;
        p.token_index[out++] = i;
        const int64_t j = i - s.begin;
        for (int64_t r = 0; r < mm; ++r, ++patch_out) {
          p.patch_index[patch_out] = s.patch_begin + j * mm + r;
          write_patch_position(j * mm + r, w, s.merge, p.patch_pos_hw + 2 * patch_out);
        }
      }
    }
#pragma omp for schedule(static) nowait
    for (int64_t i = kept_tokens; i < p.num_tokens; ++i) p.token_index[i] = -1;
#pragma omp for schedule(static) nowait
    for (int64_t i = kept_patches; i < p.num_patches; ++i) {
      p.patch_index[i] = -1;
      p.patch_pos_hw[2 * i] = -1;
      p.patch_pos_hw[2 * i + 1] = -1;
    }
  }
  p.num_kept[0] = kept_tokens;
  p.num_kept[1] = kept_patches;
}

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS
