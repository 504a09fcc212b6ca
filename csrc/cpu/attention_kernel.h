// Packed 2D-RoPE attention, forward and backward, flash-style (compiled once per ISA level; see isa.h).
//
// Forward, per work item (segment, head, 256-query block): rotate and scale the query tile once (as Q^T,
// queries along the vector lanes), then for each 64-key tile of the segment rotate K, S^T = K Q^T, online
// softmax down the columns (running max m and sum l per query), O^T += V^T P^T.  Writes out = O / l and
// lse = m + log(l).  Memory is
// O(T*D) for the cos/sin table, O(T*H*D) for the K and V rows of long segments (below), plus per-thread
// tiles: never O(L^2).
//
// RoPE: cos/sin of every token's D/2 angles are computed once per call from pos_hw and inv_freq (fp32
// angles, as transformers) into the workspace and shared by all heads; q and k are rotated in fp32 as
// their tiles are loaded.  The forward rotates the K of a long segment (kAttnPackKvMinLen) once per
// call, into fp32 rows per head beside V's (pack_rows; attention_tiles.h says why and from which length),
// which all of the segment's work items read; a shorter segment's K and V tiles are loaded by each work item.
//
// Backward recomputes P = exp(S - lse) per tile, with no L x L storage, in two passes so that every
// work item owns the rows it writes (deterministic, no atomics):
//   pass 1, per (segment, head, 64-key block): dV = sum_i P^T dO, dK = sum_i dS^T Q;
//   pass 2, per (segment, head, 64-query block): dQ = sum_j dS K,
// with dS = P * (dO V^T - rowsum(dO * O)).  dq and dk are rotated back by the inverse rotation so they
// are gradients with respect to the un-rotated inputs.
//
// All products are small fp32 GEMMs C[M x N] (+)= A[M x K] B[K x N] with N contiguous, computed by the
// register-blocked micro-kernels of vec_math.h (gemm: backward; bcast_gemm: forward).
//
// Included by csrc/cpu/kernels/ only (compiled once per ISA level; everything is in the ISA's namespace).
#pragma once
#include <omp.h>

#include <cmath>
#include <cstring>

#include "attention_tiles.h"
#include "isa.h"
#include "scalar_types.h"
#include "vec_math.h"
#include "vl3fast/rope_math.h"
#include "vl3fast/table_search.h"

namespace vl3fast::cpu::VL3FAST_ISA_NS {

constexpr int BQ = kAttnBlockQ;
constexpr int BQF = kAttnFwdBlockQ;
constexpr int BK = kAttnBlockK;
constexpr int VW = kAttnVec;
constexpr int kLdS = BK;  // leading dim of 64 x 64 tiles

// How the products' contractions are chunked (bcast_gemm's kblock: each chunk is summed from zero in registers,
// then added to C): one over the head dim (q.k^T, dO.v^T) in equal chunks of <= 40 terms (72: 2 x 36, 80:
// 2 x 40, 128: 4 x 32), one over a tile's <= 64 keys or queries in one chain (the sum over the tiles is the
// second level).  Measured with the 1000-case fp32 fuzz of tests/ops/test_fuzz.py (error <= 2x torch's): one
// chain over a head dim of 72-128 fails it (case 93: out error 1.6e-6 against 2 x 6.2e-7), S's rounding being
// the softmax weights' relative error; chunks of <= 40 pass it, and so does one 64-term chain over the keys.
// 16-term chunks everywhere pass too (the previous rule), but cost the image896 forward ~10% (one thread).
// Without FMA (the generic level: every term rounded twice, product and sum) the longer chunks fail the same
// fuzz (case 196: dk 2.1e-6 against 2 x 9.3e-7), so that level keeps 16-term chunks.
#if defined(__FMA__)
constexpr int kHeadDimChunk = 40;
constexpr int kTileChunk = BK;
#else
constexpr int kHeadDimChunk = 16;
constexpr int kTileChunk = 16;
#endif
static_assert(VW == kGemmChunk, "tiles are padded to the GEMM's column chunk");

// The template argument is the head dim of a fast path (a compile-time constant), or 0: runtime.
template <typename T, int kD>
struct Attention {
  const AttentionParams& p;
  const int D;
  const int half;
  const int Dp;
  const int64_t NT;  // tokens
  const int H;
  const int64_t* offsets;  // work items before each segment
  const float* cos_sin;    // [T, D]
  float* delta;            // [H, T]
  float* dq_accum;         // [H, T, Dp] (fused backward)
  float* packed_rows;      // [2, H, T, Dp]: rows of long segments (pack_rows; attention_tiles.h)
  char* thread_base;
  int64_t thread_bytes;

  Attention(const AttentionParams& params, bool backward)
      : p(params), D(kD > 0 ? kD : params.head_dim), half(D / 2), Dp(attn_padded_dim(D)), NT(params.num_tokens),
        H(params.num_heads) {
    const AttentionWorkspaceLayout w = attention_workspace_layout(p.num_tokens, p.num_segments, p.num_heads,
                                                                  p.head_dim, p.num_threads, backward);
    char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p.workspace) + 63) & ~uintptr_t(63));
    offsets = reinterpret_cast<int64_t*>(base + w.offsets);
    cos_sin = reinterpret_cast<float*>(base + w.cos_sin);
    delta = reinterpret_cast<float*>(base + w.delta);
    dq_accum = reinterpret_cast<float*>(base + w.dq_accum);
    packed_rows = reinterpret_cast<float*>(base + w.packed_rows);
    thread_base = base + w.per_thread;
    thread_bytes = w.thread_bytes;
  }

  float* thread_tiles(int tid) const { return reinterpret_cast<float*>(thread_base + tid * thread_bytes); }

  // Fills the offsets (serially, O(S)) and the cos/sin table (in parallel); returns the item count.
  int64_t prepare(int block) const {
    int64_t* offs = const_cast<int64_t*>(offsets);
    offs[0] = 0;
    for (int64_t s = 0; s < p.num_segments; ++s) {
      const int64_t len = p.cu_seqlens[s + 1] - p.cu_seqlens[s];
      offs[s + 1] = offs[s] + H * ((len + block - 1) / block);
    }
    float* table = const_cast<float*>(cos_sin);
    const int quarter = D / 4;
#pragma omp parallel for schedule(static) num_threads(p.num_threads)
    for (int64_t t = 0; t < NT; ++t) {
      float* cs = table + t * D;
      for (int j = 0; j < half; ++j) {
        const float a = rope2d_angle(j, quarter, p.pos_hw[2 * t], p.pos_hw[2 * t + 1], p.inv_freq);
        cs[j] = std::cos(a);
        cs[half + j] = std::sin(a);
      }
    }
    return offs[p.num_segments];
  }

  // The rows a work item owns: head h, `count` (<= block_size) rows starting at packed row `first`,
  // inside the segment [seg_start, seg_start + seg_len).
  struct ItemRows {
    int head;
    int64_t first;
    int count;
    int64_t seg_start, seg_len;
  };

  ItemRows item_rows(int64_t item, int64_t block_size) const {
    int64_t seg, block;
    int head;
    locate(item, seg, head, block);
    const int64_t len = p.cu_seqlens[seg + 1] - p.cu_seqlens[seg];
    const int64_t left = len - block * block_size;
    return {head, p.cu_seqlens[seg] + block * block_size, static_cast<int>(left < block_size ? left : block_size),
            p.cu_seqlens[seg], len};
  }

  // Work item -> (segment, head, block): the last segment whose first item is <= item.
  void locate(int64_t item, int64_t& seg, int& head, int64_t& block) const {
    const int64_t lo = last_row_at_most(offsets, p.num_segments, 1, 0, item);
    seg = lo;
    const int64_t blocks = (offsets[lo + 1] - offsets[lo]) / H;
    const int64_t local = item - offsets[lo];
    head = static_cast<int>(local / blocks);
    block = local - static_cast<int64_t>(head) * blocks;
  }

  // Rotates one row of D values at token t by +angle (sign 1) or -angle (sign -1), times mult, into out.
  void rotate_row(const float* x, int64_t t, float sign, float mult, float* out) const {
    const float* c = cos_sin + t * D;
    const float* s = c + half;
#pragma omp simd
    for (int j = 0; j < half; ++j) {
      const float a = x[j], b = x[j + half], sj = sign * s[j];
      out[j] = mult * (a * c[j] - b * sj);
      out[j + half] = mult * (b * c[j] + a * sj);
    }
  }

  // Asks for the rows [t0, t0 + n) of head h of x (clipped to the segment end) to be brought into the
  // cache: the next tile's rows are strided by the token stride (H * D values or more apart), which the
  // hardware prefetchers do not follow, so without this every tile load waits on memory.
  void prefetch_rows(const T* x, int64_t st, int64_t sh, int h, int64_t t0, int64_t end) const {
    const int64_t stop = t0 + BK < end ? t0 + BK : end;
    const int64_t bytes = static_cast<int64_t>(D) * sizeof(T);
    for (int64_t t = t0; t < stop; ++t) {
      const char* row = reinterpret_cast<const char*>(x + t * st + h * sh);
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, 0, 3);
    }
  }

  void load_row(const T* src, float* out) const {
#pragma omp simd
    for (int d = 0; d < D; ++d) out[d] = to_float(src[d]);
  }

  // rows [t0, t0 + n) of head h of x (optionally rotated and scaled) into tile[rows x Dp], zero padded to
  // `rows` rows and Dp columns.
  void load_tile(const T* x, int64_t st, int64_t sh, int h, int64_t t0, int n, int rows, bool rotate, float mult,
                 float* tile, float* tmp) const {
    for (int i = 0; i < rows; ++i) {
      float* dst = tile + i * Dp;
      if (i < n) {
        const T* src = x + (t0 + i) * st + h * sh;
        if (rotate) {
          load_row(src, tmp);
          rotate_row(tmp, t0 + i, 1.0f, mult, dst);
        } else {
          load_row(src, dst);
        }
        for (int d = D; d < Dp; ++d) dst[d] = 0.0f;
      } else {
        for (int d = 0; d < Dp; ++d) dst[d] = 0.0f;
      }
    }
  }

  // rows [t0, t0 + n) of head h, optionally rotated, transposed into tile_t[D x 64] (columns >= n zero);
  // with `rows_out` also the row-major tile [64 x Dp].
  void load_tile_t(const T* x, int64_t st, int64_t sh, int h, int64_t t0, int n, bool rotate, float* tile_t,
                   float* rows_out, float* tmp, float* tmp2) const {
    const int cols = round_up(n, VW);
    for (int j = 0; j < cols; ++j) {
      if (j < n) {
        const T* src = x + (t0 + j) * st + h * sh;
        float* row = rows_out != nullptr ? rows_out + j * Dp : tmp2;
        if (rotate) {
          load_row(src, tmp);
          rotate_row(tmp, t0 + j, 1.0f, 1.0f, row);
        } else {
          load_row(src, row);
        }
        if (rows_out != nullptr)
          for (int d = D; d < Dp; ++d) row[d] = 0.0f;
        for (int d = 0; d < D; ++d) tile_t[d * kLdS + j] = row[d];
      } else {
        for (int d = 0; d < D; ++d) tile_t[d * kLdS + j] = 0.0f;
      }
    }
    if (rows_out != nullptr)
      for (int j = n; j < round_up(n, 4); ++j)
        for (int d = 0; d < Dp; ++d) rows_out[j * Dp + d] = 0.0f;
  }

  // ---------------------------------------------------------------------------------------------- forward
  // Queries along the vector lanes: Q^T [D x 256] (rotated, scaled) is built once per work item, and per
  // 64-key tile S^T = K Q^T [nk x 256] and O^T += V^T P^T [D x 256] run on bcast_gemm (vec_math.h), which
  // broadcasts K's and V's elements from their row-major tiles, so no tile of K or V is transposed.  The
  // online softmax then works down the columns of S^T: each lane is one query, so its max and sum are
  // vertical vector operations (no horizontal reduction, no scalar work per query), the row max comes out
  // of the q.k^T register blocks (kStoreColMax), and the rescale of O by exp(m_old - m_new) is folded into the
  // accumulator load of the p.v product.  Keys are the contraction of p.v and the rows of S^T, so a partial
  // tile computes only its nk keys and D = 72 costs 72 columns, not a padded 80.  The running max m is kept
  // in log2 units (m * log2 e, rounded once per tile) and every exponent uses that same value, so its
  // rounding cancels between the weights and the sum l.
  void forward_item(int64_t item, float* w) const {
    const ItemRows rows = item_rows(item, BQF);
    const int h = rows.head;
    const int64_t start = rows.seg_start, len = rows.seg_len;
    const int64_t q0 = rows.first;
    const int nq = rows.count;
    const int nq16 = round_up(nq, VW);  // lanes computed: queries nq.. of the last chunk are zero columns

    float* qt = w;                // [D x 256]: Q^T
    float* ot = qt + D * BQF;     // [D x 256]: O^T
    float* const k_tile = ot + D * BQF;   // [64 x Dp]: rotated K rows (a segment of <= 256 tokens)
    float* const v_tile = k_tile + BK * Dp;  // [64 x Dp]: V rows
    float* kr = k_tile;           // the K rows of the key tile: k_tile or packed
    float* vr = v_tile;           // the V rows: v_tile or packed
    float* st = v_tile + BK * Dp; // [64 x 256]: S^T, then P^T in place
    float* m = st + BK * BQF;     // [256]: running max, log2 units
    float* l = m + BQF;           // [256]: running sum
    float* cm = l + BQF;          // [256]: the tile's column max, then exp(m_old - m_new)
    float* tmp = cm + BQF;        // [Dp]
    float* tmp2 = tmp + Dp;       // [Dp]

    const T* qx = static_cast<const T*>(p.q);
    const T* kx = static_cast<const T*>(p.k);
    const T* vx = static_cast<const T*>(p.v);
    for (int i = 0; i < nq16; ++i) {
      if (i < nq) {
        load_row(qx + (q0 + i) * p.q_stride_token + h * p.q_stride_head, tmp);
        rotate_row(tmp, q0 + i, 1.0f, p.scale, tmp2);
        for (int d = 0; d < D; ++d) qt[d * BQF + i] = tmp2[d];
      } else {
        for (int d = 0; d < D; ++d) qt[d * BQF + i] = 0.0f;
      }
    }

    const vnat log2e = vnat{} + 1.44269504088896341f;
    const bool is_packed = len > kAttnPackKvMinLen;  // K and V rows in packed_rows (pack_rows)
    for (int64_t k0 = start; k0 < start + len; k0 += BK) {
      const int nk = static_cast<int>(start + len - k0 < BK ? start + len - k0 : BK);
      const bool first = k0 == start;
      if (is_packed) {
        kr = packed(0, h, k0);
        vr = packed(1, h, k0);
      } else {
        load_tile(kx, p.k_stride_token, p.k_stride_head, h, k0, nk, nk, true, 1.0f, kr, tmp);
        load_tile(vx, p.v_stride_token, p.v_stride_head, h, k0, nk, nk, false, 1.0f, vr, tmp);
        prefetch_rows(kx, p.k_stride_token, p.k_stride_head, h, k0 + BK, start + len);
        prefetch_rows(vx, p.v_stride_token, p.v_stride_head, h, k0 + BK, start + len);
      }

      for (int i = 0; i < nq16; i += kLanes) vstore(cm + i, vnat{} - INFINITY);
      bcast_gemm<BcastMode::kStoreColMax>(kr, Dp, 1, qt, BQF, st, BQF, nk, nq16, D, cm, kHeadDimChunk);
      for (int i = 0; i < nq16; i += kLanes) {  // m_new = max(m_old, tile max); cm <- exp(m_old - m_new)
        const vnat tile_max = vload(cm + i) * log2e;
        const vnat m_old = vload(m + i);
        const vnat m_new = first ? tile_max : vmaximum(m_old, tile_max);
        vstore(m + i, m_new);
        vstore(cm + i, first ? vnat{} : vexp2_nonpositive(m_old - m_new));
      }
      for (int i = 0; i < nq16; i += kLanes) {  // P = 2^(S log2 e - m) down each column; l = l * alpha + sum
        const vnat mi = vload(m + i);
        vnat sum = vnat{};
        float* sj = st + i;
        for (int j = 0; j < nk; ++j, sj += BQF) {
          const vnat e = vexp2_nonpositive(vload(sj) * log2e - mi);
          vstore(sj, e);
          sum += e;
        }
        vstore(l + i, first ? sum : vload(l + i) * vload(cm + i) + sum);
      }
      // O^T = O^T * alpha + V^T P^T: V's element (d, j) is vr[j * Dp + d].
      if (first) bcast_gemm<BcastMode::kStore>(vr, 1, Dp, st, BQF, ot, BQF, D, nq16, nk, nullptr, kTileChunk);
      else bcast_gemm<BcastMode::kScaleAdd>(vr, 1, Dp, st, BQF, ot, BQF, D, nq16, nk, cm, kTileChunk);
    }

    T* out = static_cast<T*>(p.out);
    for (int i = 0; i < nq; ++i) {
      const float inv = 1.0f / l[i];
      T* dst = out + (q0 + i) * p.out_stride_token + h * p.out_stride_head;
      for (int d = 0; d < D; ++d) dst[d] = from_float<T>(ot[d * BQF + i] * inv);
      p.lse[h * NT + q0 + i] = m[i] * 0.693147180559945309f + std::log(l[i]);
    }
  }

  // Row t of head h of packed_rows' first (which = 0) or second (1) tensor.
  float* packed(int which, int h, int64_t t) const {
    return packed_rows + ((static_cast<int64_t>(which) * H + h) * NT + t) * Dp;
  }

  bool has_long_segment() const {
    for (int64_t s = 0; s < p.num_segments; ++s)
      if (p.cu_seqlens[s + 1] - p.cu_seqlens[s] > kAttnPackKvMinLen) return true;
    return false;
  }

  // The rows [t0, t0 + 64) of every segment longer than kAttnPackKvMinLen, all heads, into packed_rows: x0's
  // rotated and times mult0 (packed(0, ...)), x1's as they are (packed(1, ...)).  One work unit reads 64 whole
  // token rows (every head's values: contiguous for the usual [T, H, D] layout).
  void pack_rows(int64_t t0, const void* x0, int64_t st0, int64_t sh0, float mult0, const void* x1, int64_t st1,
                 int64_t sh1, float* tmp) const {
    const int64_t t1 = t0 + BK < NT ? t0 + BK : NT;
    for (int64_t seg = last_row_at_most(p.cu_seqlens, p.num_segments, 1, 0, t0); seg < p.num_segments; ++seg) {
      const int64_t s0 = p.cu_seqlens[seg], s1 = p.cu_seqlens[seg + 1];
      if (s0 >= t1) break;
      const int64_t a = s0 > t0 ? s0 : t0, b = s1 < t1 ? s1 : t1;
      if (s1 - s0 <= kAttnPackKvMinLen || a >= b) continue;
      const int n = static_cast<int>(b - a);
      for (int h = 0; h < H; ++h) {
        load_tile(static_cast<const T*>(x0), st0, sh0, h, a, n, n, true, mult0, packed(0, h, a), tmp);
        load_tile(static_cast<const T*>(x1), st1, sh1, h, a, n, n, false, 1.0f, packed(1, h, a), tmp);
      }
    }
  }

  void forward() const {
    const int64_t items = prepare(BQF);
    const bool any_long = has_long_segment();
#pragma omp parallel num_threads(p.num_threads)
    {
      float* w = thread_tiles(omp_get_thread_num());
      if (any_long) {
#pragma omp for schedule(static)
        for (int64_t t0 = 0; t0 < NT; t0 += BK)
          pack_rows(t0, p.k, p.k_stride_token, p.k_stride_head, 1.0f, p.v, p.v_stride_token, p.v_stride_head, w);
      }  // (the loop's barrier: every row is packed before any item reads it)
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) forward_item(item, w);
    }
  }

  // --------------------------------------------------------------------------------------------- backward
  // delta[h, t] = sum_d dout * out (fp32).
  void compute_delta() const {
    const T* out = static_cast<const T*>(p.out);
    const T* dout = static_cast<const T*>(p.dout);
#pragma omp parallel for schedule(static) num_threads(p.num_threads)
    for (int64_t t = 0; t < NT; ++t) {
      for (int h = 0; h < H; ++h) {
        const T* a = out + t * p.out_stride_token + h * p.out_stride_head;
        const T* b = dout + t * p.dout_stride_token + h * p.dout_stride_head;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int d = 0; d < D; ++d) acc += to_float(a[d]) * to_float(b[d]);
        delta[h * NT + t] = acc;
      }
    }
  }

  // s[j] = exp(s[j] - shift) for j < n: whole vectors, then the scalar function for the last n % kLanes.
  static void exp_row(float* s, float shift, int n) {
    int j = 0;
    for (; j + kLanes <= n; j += kLanes) vstore(s + j, vexp_nonpositive_precise(vload(s + j) - shift));
    for (; j < n; ++j) s[j] = exp_nonpositive_precise(s[j] - shift);
  }

  // P and dS = P * (dP - delta) for rows < nq, columns < nk; P overwrites S, dS overwrites dP.
  //
  // A tile that holds every key of its rows (`whole_rows`: a segment of <= 64 tokens) recomputes the
  // softmax exactly as torch's does, P = exp(S - rowmax) / rowsum, and takes delta = rowsum(P * dP) from
  // the same tile.  On a segment of 2 or 3 keys dP - delta is a small difference (for 2 keys it is
  // P_other * (dP_j - dP_other)), and only a delta built from the same P and dP lets the rounding of dP and
  // of sum(P) cancel in it; rowsum(dO * O) carries the forward's independent rounding of O, and
  // exp(S - lse) carries that of lse (the forward's accumulation order, its exp), together 2-9x torch's
  // dq/dk/dv error there.  A 1-key row gets P = 1 and dS = 0 exactly (its exact dq, dk are 0).
  // Longer segments span several key tiles: P = exp(S - lse), delta = delta_i (compute_delta).
  // Columns nk..round_up(nk, 16) of S and dP are zeroed in the whole-row case.
  void softmax_grad(float* s, float* dp, const float* lse_i, const float* delta_i, int nq, int nk,
                    bool whole_rows) const {
    const int nk16 = round_up(nk, VW);
    for (int i = 0; i < nq; ++i) {
      float* si = s + i * kLdS;
      float* dpi = dp + i * kLdS;
      float di = delta_i[i];
      if (whole_rows) {
        float mx = si[0];
        for (int j = 1; j < nk; ++j) mx = si[j] > mx ? si[j] : mx;
        exp_row(si, mx, nk);
        for (int j = nk; j < nk16; ++j) si[j] = dpi[j] = 0.0f;
        vnat sum = vnat{};
        for (int j = 0; j < nk16; j += kLanes) sum += vload(si + j);
        const float inv = 1.0f / hsum(sum);
        vnat acc = vnat{};
        for (int j = 0; j < nk16; j += kLanes) {
          const vnat pj = vload(si + j) * inv;
          vstore(si + j, pj);
          acc += pj * vload(dpi + j);
        }
        di = hsum(acc);
      } else {
        exp_row(si, lse_i[i], nk);
      }
#pragma omp simd
      for (int j = 0; j < nk; ++j) dpi[j] = si[j] * (dpi[j] - di);
    }
  }

  // dst[j x i] = src[i x j] for i < nq, j < nk; rows nk..round_up(nk, 4) and columns nq.. zeroed.
  static void transpose(const float* src, float* dst, int nq, int nk) {
    for (int j = 0; j < round_up(nk, 4); ++j)
      for (int i = 0; i < BQ; ++i) dst[j * kLdS + i] = (j < nk && i < nq) ? src[i * kLdS + j] : 0.0f;
  }

  // Pass 1: one 64-key block of one head: dk, dv.
  void backward_kv_item(int64_t item, float* w) const {
    const ItemRows rows = item_rows(item, BK);
    if (rows.seg_len <= kTinySegment) return backward_tiny_segment(rows, w);
    const int h = rows.head;
    const int64_t start = rows.seg_start, len = rows.seg_len;
    const int64_t k0 = rows.first;
    const int nk = rows.count;
    const int mk = round_up(nk, 4), nk16 = round_up(nk, VW);

    float* kt = w;                 // [Dp x 64]
    float* vt = kt + Dp * BK;      // [Dp x 64]
    float* dk = vt + Dp * BK;      // [64 x Dp]
    float* dv = dk + BK * Dp;      // [64 x Dp]
    float* q = dv + BK * Dp;       // [64 x Dp]
    float* dout = q + BQ * Dp;     // [64 x Dp]
    float* s = dout + BQ * Dp;     // [64 x 64]
    float* dp = s + BQ * BK;       // [64 x 64]
    float* pt = dp + BQ * BK;      // [64 x 64]
    float* dst = pt + BQ * BK;     // [64 x 64]
    float* tmp = dst + BQ * BK;    // [Dp]
    float* tmp2 = tmp + Dp;        // [Dp]

    const T* qx = static_cast<const T*>(p.q);
    const T* kx = static_cast<const T*>(p.k);
    const T* vx = static_cast<const T*>(p.v);
    const T* dox = static_cast<const T*>(p.dout);
    load_tile_t(kx, p.k_stride_token, p.k_stride_head, h, k0, nk, true, kt, nullptr, tmp, tmp2);
    load_tile_t(vx, p.v_stride_token, p.v_stride_head, h, k0, nk, false, vt, nullptr, tmp, tmp2);
    std::memset(dk, 0, sizeof(float) * mk * Dp);
    std::memset(dv, 0, sizeof(float) * mk * Dp);

    for (int64_t q0 = start; q0 < start + len; q0 += BQ) {
      const int nq = static_cast<int>(start + len - q0 < BQ ? start + len - q0 : BQ);
      const int mq = round_up(nq, 4);
      load_tile(qx, p.q_stride_token, p.q_stride_head, h, q0, nq, mq, true, p.scale, q, tmp);
      load_tile(dox, p.dout_stride_token, p.dout_stride_head, h, q0, nq, mq, false, 1.0f, dout, tmp);
      prefetch_rows(qx, p.q_stride_token, p.q_stride_head, h, q0 + BQ, start + len);
      prefetch_rows(dox, p.dout_stride_token, p.dout_stride_head, h, q0 + BQ, start + len);
      gemm(q, Dp, kt, kLdS, s, kLdS, mq, nk16, D, false);
      gemm(dout, Dp, vt, kLdS, dp, kLdS, mq, nk16, D, false);
      softmax_grad(s, dp, p.lse + h * NT + q0, delta + h * NT + q0, nq, nk, len <= BK);
      transpose(s, pt, nq, nk);
      transpose(dp, dst, nq, nk);
      gemm(pt, kLdS, dout, Dp, dv, Dp, mk, Dp, nq, true);
      gemm(dst, kLdS, q, Dp, dk, Dp, mk, Dp, nq, true);  // q carries the softmax scale
    }

    T* dkx = static_cast<T*>(p.dk);
    T* dvx = static_cast<T*>(p.dv);
    for (int j = 0; j < nk; ++j) {
      T* dkr = dkx + (k0 + j) * p.dk_stride_token + h * p.dk_stride_head;
      T* dvr = dvx + (k0 + j) * p.dv_stride_token + h * p.dv_stride_head;
      rotate_row(dk + j * Dp, k0 + j, -1.0f, 1.0f, tmp);
      for (int d = 0; d < D; ++d) {
        dkr[d] = from_float<T>(tmp[d]);
        dvr[d] = from_float<T>(dv[j * Dp + d]);
      }
    }
  }

  // Pass 2: one 64-query block of one head: dq.
  void backward_q_item(int64_t item, float* w) const {
    const ItemRows rows = item_rows(item, BQ);
    if (rows.seg_len <= kTinySegment) return;  // pass 1 wrote its dq (backward_tiny_segment)
    const int h = rows.head;
    const int64_t start = rows.seg_start, len = rows.seg_len;
    const int64_t q0 = rows.first;
    const int nq = rows.count;
    const int mq = round_up(nq, 4);

    float* q = w;                  // [64 x Dp]
    float* dout = q + BQ * Dp;     // [64 x Dp]
    float* dq = dout + BQ * Dp;    // [64 x Dp]
    float* kt = dq + BQ * Dp;      // [Dp x 64]
    float* vt = kt + Dp * BK;      // [Dp x 64]
    float* krows = vt + Dp * BK;   // [64 x Dp]
    float* s = krows + BK * Dp;    // [64 x 64]
    float* dp = s + BQ * BK;       // [64 x 64]
    float* tmp = dp + BQ * BK;     // [Dp]
    float* tmp2 = tmp + Dp;        // [Dp]

    const T* qx = static_cast<const T*>(p.q);
    const T* kx = static_cast<const T*>(p.k);
    const T* vx = static_cast<const T*>(p.v);
    const T* dox = static_cast<const T*>(p.dout);
    load_tile(qx, p.q_stride_token, p.q_stride_head, h, q0, nq, mq, true, p.scale, q, tmp);
    load_tile(dox, p.dout_stride_token, p.dout_stride_head, h, q0, nq, mq, false, 1.0f, dout, tmp);
    std::memset(dq, 0, sizeof(float) * mq * Dp);

    for (int64_t k0 = start; k0 < start + len; k0 += BK) {
      const int nk = static_cast<int>(start + len - k0 < BK ? start + len - k0 : BK);
      const int nk16 = round_up(nk, VW);
      load_tile_t(kx, p.k_stride_token, p.k_stride_head, h, k0, nk, true, kt, krows, tmp, tmp2);
      load_tile_t(vx, p.v_stride_token, p.v_stride_head, h, k0, nk, false, vt, nullptr, tmp, tmp2);
      prefetch_rows(kx, p.k_stride_token, p.k_stride_head, h, k0 + BK, start + len);
      prefetch_rows(vx, p.v_stride_token, p.v_stride_head, h, k0 + BK, start + len);
      gemm(q, Dp, kt, kLdS, s, kLdS, mq, nk16, D, false);
      gemm(dout, Dp, vt, kLdS, dp, kLdS, mq, nk16, D, false);
      softmax_grad(s, dp, p.lse + h * NT + q0, delta + h * NT + q0, nq, nk, len <= BK);
      gemm(dp, kLdS, krows, Dp, dq, Dp, mq, Dp, nk, true);
    }

    T* dqx = static_cast<T*>(p.dq);
    for (int i = 0; i < nq; ++i) {
      T* dqr = dqx + (q0 + i) * p.dq_stride_token + h * p.dq_stride_head;
      rotate_row(dq + i * Dp, q0 + i, -1.0f, p.scale, tmp);
      for (int d = 0; d < D; ++d) dqr[d] = from_float<T>(tmp[d]);
    }
  }

  // A segment of at most kTinySegment tokens: all of its backward (dq, dk, dv) in one work item (pass 1 of
  // the two-pass backward, which pass 2 then skips, or the fused item), in fp64.  Its dq and dk are differences of nearly equal terms (2 keys: dS = P0 P1 (dP0 - dP1)), so
  // every fp32 rounding on the way (q.k, dO.v, exp, the row sums) is as large as torch's whole error
  // there: the fp32 tile path measured up to 2.2x torch's dq/dk error on 2- and 3-token segments.  In fp64
  // the kernel's error is the final rounding to the output dtype.  The cost is O(L^2 D) per head, about
  // what the fp32 tiles padded to 16 keys spend on such a segment.  A 1-token segment gets P = 1 and
  // dq = dk = 0 exactly (softmax over one key is constant).
  static constexpr int kTinySegment = 8;

  void rotate_row_f64(const double* x, int64_t t, double sign, double mult, double* out) const {
    const float* c = cos_sin + t * D;
    const float* s = c + half;
    for (int j = 0; j < half; ++j) {
      const double a = x[j], b = x[j + half], cj = c[j], sj = sign * s[j];
      out[j] = mult * (a * cj - b * sj);
      out[j + half] = mult * (b * cj + a * sj);
    }
  }

  // Rows t0..t0+L of head h of x into out[L x D] as fp64, rotated (and times mult) if `rotate`.
  void load_rows_f64(const T* x, int64_t st, int64_t sh, int h, int64_t t0, int L, bool rotate, double mult,
                     double* out, double* tmp) const {
    for (int i = 0; i < L; ++i) {
      const T* src = x + (t0 + i) * st + h * sh;
      double* row = rotate ? tmp : out + i * D;
      for (int d = 0; d < D; ++d) row[d] = static_cast<double>(to_float(src[d]));
      if (rotate) rotate_row_f64(tmp, t0 + i, 1.0, mult, out + i * D);
    }
  }

  // Workspace: 7 x [L x D] + 2 x [L x L] + [D] doubles, far below one thread's backward tiles (6 x 64 x Dp
  // floats) for L <= 8.
  void backward_tiny_segment(const ItemRows& rows, float* w) const {
    const int L = static_cast<int>(rows.seg_len), h = rows.head;
    const int64_t t0 = rows.seg_start;
    double* q = reinterpret_cast<double*>(w);  // [L x D] rotated, times the softmax scale
    double* k = q + L * D;                      // [L x D] rotated
    double* v = k + L * D;
    double* dout = v + L * D;
    double* dq = dout + L * D;
    double* dk = dq + L * D;
    double* dv = dk + L * D;
    double* pr = dv + L * D;  // [L x L]: S, then P
    double* ds = pr + L * L;  // [L x L]: dP, then dS
    double* tmp = ds + L * L; // [D]

    const double scale = p.scale;
    load_rows_f64(static_cast<const T*>(p.q), p.q_stride_token, p.q_stride_head, h, t0, L, true, scale, q, tmp);
    load_rows_f64(static_cast<const T*>(p.k), p.k_stride_token, p.k_stride_head, h, t0, L, true, 1.0, k, tmp);
    load_rows_f64(static_cast<const T*>(p.v), p.v_stride_token, p.v_stride_head, h, t0, L, false, 1.0, v, tmp);
    load_rows_f64(static_cast<const T*>(p.dout), p.dout_stride_token, p.dout_stride_head, h, t0, L, false, 1.0, dout,
                  tmp);
    for (int i = 0; i < L; ++i)
      for (int j = 0; j < L; ++j) {
        double sij = 0.0, dpij = 0.0;
#pragma omp simd reduction(+ : sij, dpij)
        for (int d = 0; d < D; ++d) {
          sij += q[i * D + d] * k[j * D + d];
          dpij += dout[i * D + d] * v[j * D + d];
        }
        pr[i * L + j] = sij;
        ds[i * L + j] = dpij;
      }
    for (int i = 0; i < L; ++i) {  // P = softmax(S), delta = rowsum(P dP), dS = P (dP - delta)
      double* pi = pr + i * L;
      double* dsi = ds + i * L;
      double mx = pi[0], sum = 0.0, delta = 0.0;
      for (int j = 1; j < L; ++j) mx = pi[j] > mx ? pi[j] : mx;
      for (int j = 0; j < L; ++j) sum += (pi[j] = std::exp(pi[j] - mx));
      for (int j = 0; j < L; ++j) delta += (pi[j] /= sum) * dsi[j];
      for (int j = 0; j < L; ++j) dsi[j] = pi[j] * (dsi[j] - delta);
    }
    for (int j = 0; j < L; ++j)  // dv = P^T dO, dk = dS^T q; dq = dS k
      for (int d = 0; d < D; ++d) {
        double a = 0.0, b = 0.0, c = 0.0;
        for (int i = 0; i < L; ++i) {
          a += pr[i * L + j] * dout[i * D + d];
          b += ds[i * L + j] * q[i * D + d];
          c += ds[j * L + i] * k[i * D + d];
        }
        dv[j * D + d] = a;
        dk[j * D + d] = b;
        dq[j * D + d] = c;
      }
    T* dqx = static_cast<T*>(p.dq);
    T* dkx = static_cast<T*>(p.dk);
    T* dvx = static_cast<T*>(p.dv);
    for (int i = 0; i < L; ++i) {
      const int64_t t = t0 + i;
      T* dqr = dqx + t * p.dq_stride_token + h * p.dq_stride_head;
      T* dkr = dkx + t * p.dk_stride_token + h * p.dk_stride_head;
      T* dvr = dvx + t * p.dv_stride_token + h * p.dv_stride_head;
      rotate_row_f64(dq + i * D, t, -1.0, scale, tmp);
      for (int d = 0; d < D; ++d) dqr[d] = from_float<T>(static_cast<float>(tmp[d]));
      rotate_row_f64(dk + i * D, t, -1.0, 1.0, tmp);
      for (int d = 0; d < D; ++d) dkr[d] = from_float<T>(static_cast<float>(tmp[d]));
      for (int d = 0; d < D; ++d) dvr[d] = from_float<T>(static_cast<float>(dv[i * D + d]));
    }
  }

  // Fused backward, one work item per (segment, head), FlashAttention-2's loop: for each 64-key block
  // (K, V rotated once), for each 64-query block (Q rotated and dO loaded, or for a long segment read from
  // packed_rows, which pack_rows filled once per call): S = Q K^T, dP = dO V^T, P and dS (softmax_grad),
  // dV^T += dO^T P, dK^T += Q^T dS, dQ += dS K, dQ accumulating in fp32 in dq_accum over the key blocks.
  // Five products per tile pair, none on a transposed copy: bcast_gemm broadcasts dO^T and Q^T from the
  // row-major tiles.  dV and dK are kept transposed ([D x 64], keys along the lanes) so that their products
  // are whole 6 x 4-zmm register blocks with D = 72 unpadded; the keys nk.. of K^T and V^T are 0.
  void backward_fused_item(int64_t item, float* w) const {
    const int64_t seg = item / H;
    const int h = static_cast<int>(item - seg * H);
    const int64_t start = p.cu_seqlens[seg], len = p.cu_seqlens[seg + 1] - start;
    if (len <= kTinySegment) return backward_tiny_segment({h, start, static_cast<int>(len), start, len}, w);

    float* kt = w;                 // [Dp x 64]: K^T
    float* vt = kt + Dp * BK;      // [Dp x 64]: V^T
    float* krows = vt + Dp * BK;   // [64 x Dp]: K
    float* dkt = krows + BK * Dp;  // [Dp x 64]: dK^T
    float* dvt = dkt + Dp * BK;    // [Dp x 64]: dV^T
    float* const q_tile = dvt + Dp * BK;   // [64 x Dp]: Q rotated and scaled (a segment not packed)
    float* const do_tile = q_tile + BQ * Dp;  // [64 x Dp]: dO
    float* q = q_tile;             // the query block's Q rows: q_tile or packed_rows
    float* dout = do_tile;         // its dO rows
    const bool is_packed = len > kAttnPackKvMinLen;  // Q and dO rows in packed_rows (pack_rows)
    float* s = do_tile + BQ * Dp;  // [64 x 64]: S, then P
    float* dp = s + BQ * BK;       // [64 x 64]: dP, then dS
    float* tmp = s + 4 * BQ * BK;  // [Dp] (past the 4 tiles of 64 x 64 the layout reserves; 2 used)
    float* tmp2 = tmp + Dp;        // [Dp]
    float* dqa = dq_accum + (static_cast<int64_t>(h) * NT + start) * Dp;  // [len x Dp]
    std::memset(dqa, 0, sizeof(float) * len * Dp);

    const T* qx = static_cast<const T*>(p.q);
    const T* kx = static_cast<const T*>(p.k);
    const T* vx = static_cast<const T*>(p.v);
    const T* dox = static_cast<const T*>(p.dout);
    T* dkx = static_cast<T*>(p.dk);
    T* dvx = static_cast<T*>(p.dv);
    for (int64_t k0 = start; k0 < start + len; k0 += BK) {
      const int nk = static_cast<int>(start + len - k0 < BK ? start + len - k0 : BK);
      const int nk16 = round_up(nk, VW);
      load_tile_t(kx, p.k_stride_token, p.k_stride_head, h, k0, nk, true, kt, krows, tmp, tmp2);
      load_tile_t(vx, p.v_stride_token, p.v_stride_head, h, k0, nk, false, vt, nullptr, tmp, tmp2);
      std::memset(dkt, 0, sizeof(float) * D * BK);
      std::memset(dvt, 0, sizeof(float) * D * BK);
      for (int64_t q0 = start; q0 < start + len; q0 += BQ) {
        const int nq = static_cast<int>(start + len - q0 < BQ ? start + len - q0 : BQ);
        if (is_packed) {
          q = packed(0, h, q0);
          dout = packed(1, h, q0);
        } else {
          load_tile(qx, p.q_stride_token, p.q_stride_head, h, q0, nq, nq, true, p.scale, q, tmp);
          load_tile(dox, p.dout_stride_token, p.dout_stride_head, h, q0, nq, nq, false, 1.0f, dout, tmp);
          prefetch_rows(qx, p.q_stride_token, p.q_stride_head, h, q0 + BQ, start + len);
          prefetch_rows(dox, p.dout_stride_token, p.dout_stride_head, h, q0 + BQ, start + len);
        }
        bcast_gemm<BcastMode::kStore>(q, Dp, 1, kt, kLdS, s, kLdS, nq, nk16, D, nullptr, kHeadDimChunk);
        bcast_gemm<BcastMode::kStore>(dout, Dp, 1, vt, kLdS, dp, kLdS, nq, nk16, D, nullptr, kHeadDimChunk);
        softmax_grad(s, dp, p.lse + h * NT + q0, delta + h * NT + q0, nq, nk, len <= BK);
        bcast_gemm<BcastMode::kAdd>(dout, 1, Dp, s, kLdS, dvt, kLdS, D, nk16, nq, nullptr, kTileChunk);  // dV^T += dO^T P
        bcast_gemm<BcastMode::kAdd>(q, 1, Dp, dp, kLdS, dkt, kLdS, D, nk16, nq, nullptr, kTileChunk);    // dK^T += Q^T dS (scaled)
        bcast_gemm<BcastMode::kAdd>(dp, kLdS, 1, krows, Dp, dqa + (q0 - start) * Dp, Dp, nq, Dp, nk, nullptr, kTileChunk);  // dQ += dS K
      }
      for (int j = 0; j < nk; ++j) {
        T* dkr = dkx + (k0 + j) * p.dk_stride_token + h * p.dk_stride_head;
        T* dvr = dvx + (k0 + j) * p.dv_stride_token + h * p.dv_stride_head;
        for (int d = 0; d < D; ++d) tmp2[d] = dkt[d * BK + j];
        rotate_row(tmp2, k0 + j, -1.0f, 1.0f, tmp);
        for (int d = 0; d < D; ++d) {
          dkr[d] = from_float<T>(tmp[d]);
          dvr[d] = from_float<T>(dvt[d * BK + j]);
        }
      }
    }
    T* dqx = static_cast<T*>(p.dq);
    for (int64_t i = 0; i < len; ++i) {
      T* dqr = dqx + (start + i) * p.dq_stride_token + h * p.dq_stride_head;
      rotate_row(dqa + i * Dp, start + i, -1.0f, p.scale, tmp);
      for (int d = 0; d < D; ++d) dqr[d] = from_float<T>(tmp[d]);
    }
  }

  void backward() const {
    if (attn_backward_fused(p.num_segments, H, p.num_threads)) {
      prepare(BQ);  // the cos/sin table (the block offsets go unused)
      compute_delta();
      const int64_t items = p.num_segments * H;
      const bool any_long = has_long_segment();
#pragma omp parallel num_threads(p.num_threads)
      {
        float* w = thread_tiles(omp_get_thread_num());
        if (any_long) {
#pragma omp for schedule(static)
          for (int64_t t0 = 0; t0 < NT; t0 += BK)
            pack_rows(t0, p.q, p.q_stride_token, p.q_stride_head, p.scale, p.dout, p.dout_stride_token,
                      p.dout_stride_head, w);
        }  // (barrier)
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; ++item) backward_fused_item(item, w);
      }
      return;
    }
    const int64_t items = prepare(BQ);  // key blocks and query blocks are both 64 wide: same item list
    static_assert(BQ == BK, "the backward passes share one work-item list");
    compute_delta();
#pragma omp parallel num_threads(p.num_threads)
    {
      float* w = thread_tiles(omp_get_thread_num());
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) backward_kv_item(item, w);
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) backward_q_item(item, w);
    }
  }
};

// The forward for bf16 inputs on AVX512-BF16 (kernels/attention_bf16.cpp): q.k^T and p.v as bf16 dot
// products (vdpbf16ps) with fp32 accumulation.  Instantiated for the fast head dims and 0 (runtime).
template <int kD>
void forward_bf16_dot(const AttentionParams& p);
// The backward for bf16 inputs on AVX512-BF16 (kernels/attention_bf16_backward.cpp): the fused and the two-pass
// backward's products as bf16 dot products (vdpbf16ps) with fp32 accumulation.
template <int kD>
void backward_bf16_dot(const AttentionParams& p);

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS
