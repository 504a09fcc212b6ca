// rope2d attention backward for bf16 inputs on AVX512-BF16: all five products of a tile pair as bf16 dot
// products (vdpbf16ps, fp32 accumulation; bf16_dot.h), twice the multiply-adds per instruction of the fp32-tile
// backward.  Compiled in every ISA build; only builds with __AVX512BF16__ (the avx512bf16 level, isa.h)
// define the kernel, and only they call it (kernels/attention.cpp).
//
// The fused backward's loop (Attention::backward_fused_item, attention_kernel.h: one work item per (segment,
// head), 64-key blocks outer, 64-query blocks inner, dQ accumulating in fp32 in dq_accum), on bf16 operands:
// - q and k are rotated in fp32 and rounded to bf16 once, as the bf16 forward does (the same rounding, so S
//   is the forward's S and P = exp(S * scale - lse) is consistent with the forward's lse); the softmax scale
//   is applied to S in fp32 and to dq and dk as they are written.
// - S = Q K^T and dP = dO V^T contract over pairs of head-dim elements: Q and dO rows are bf16 rows read as
//   words, K^T and V^T are [D/2 x 64 keys] words.
// - P and dS = P (dP - delta) are computed in fp32 (Attention::softmax_grad: the same whole-row rule for
//   segments of <= 64 tokens), then rounded to bf16 for the products that take them, as torch's flash CPU
//   backward does for reduced types: dV^T += dO^T P and dK^T += Q^T dS contract over pairs of queries (P and
//   dS interleaved two query rows at a time, dO and Q interleaved two tokens at a time), dQ += dS K over
//   pairs of keys (dS's bf16 rows read as words, K interleaved two keys at a time).
// - dV^T and dK^T ([D x 64], keys along the lanes) and dQ stay fp32 and are rotated back as the fp32 kernel's.
// Segments of <= kTinySegment tokens take the fp32 kernel's fp64 path (Attention::backward_tiny_segment).  Calls
// with too few (segment, head) items for the threads (attn_backward_fused false) run the fp32 kernel's two passes
// on the same blocks: pass 1 per (segment, head, 64-key block) dK and dV, pass 2 per 64-query block dQ (S and
// dP recomputed: 7 products per tile pair instead of 5).
#include "../attention_kernel.h"
#include "../bf16_dot.h"

#if defined(__AVX512BF16__)

namespace vl3fast::cpu::VL3FAST_ISA_NS {
namespace {

// Row i of `rows` (16 floats at a time, ld floats apart) for i < n, zero beyond; columns >= nk zero.
static inline __m512 row_or_zero(const float* rows, int ld, int i, int n, int j0, int nk) {
  if (i >= n || j0 >= nk) return _mm512_setzero_ps();
  const __mmask16 keep = nk - j0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (nk - j0)) - 1);
  return _mm512_maskz_loadu_ps(keep, rows + i * ld + j0);
}

// dst[c * ldd + j] = rows[j * ld + c] (32-bit words) for c < cols, j < round_up(n, 16); rows j >= n read as 0.
// 16 x 16 blocks transposed in registers (transpose16).
static void transpose_words(const uint32_t* rows, int ld, int n, int cols, uint32_t* dst, int ldd) {
  for (int j0 = 0; j0 < n; j0 += 16)
    for (int c0 = 0; c0 < cols; c0 += 16) {
      const int nc = cols - c0 < 16 ? cols - c0 : 16;
      const __mmask16 mask = nc == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nc) - 1);
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = j0 + i < n ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi32(mask, rows + (j0 + i) * ld + c0))
                          : _mm512_setzero_ps();
      transpose16(r);
      for (int i = 0; i < nc; ++i) _mm512_storeu_ps(reinterpret_cast<float*>(dst + (c0 + i) * ldd + j0), r[i]);
    }
}

template <int kD>
struct Bf16DotBackward {
  const Attention<bf16, kD> a;  // tables, delta, dq_accum, row loading, rotation, softmax_grad, the fp64 path

  explicit Bf16DotBackward(const AttentionParams& p) : a(p, true) {}

  // Row t of x (bf16, head h) as it is, zero padded to Dp.
  void plain_row(const bf16* x, int64_t st, int64_t sh, int h, int64_t t, uint16_t* out) const {
    std::memcpy(out, x + t * st + h * sh, sizeof(uint16_t) * a.D);
    for (int d = a.D; d < a.Dp; ++d) out[d] = 0;
  }

  // [n x Dp] bf16 rows (n rows, Dp / 2 words apart) -> [ceil(n/2) x Dp] words, rows interleaved two by two.
  void pair_rows(const uint32_t* rows, int n, uint32_t* dst) const {
    const int Dp = a.Dp, Dp2 = Dp / 2;
    for (int ip = 0; 2 * ip < n; ++ip) {
      const uint16_t* r0 = reinterpret_cast<const uint16_t*>(rows + 2 * ip * Dp2);
      interleave_rows(r0, 2 * ip + 1 < n ? r0 + Dp : nullptr, Dp, dst + ip * Dp);
    }
  }

  // [n x 64] fp32 tile (rows < n, columns < nk) -> [ceil(n/2) x nk16] words, two rows interleaved, rounded.
  static void pack_row_pairs(const float* t, int n, int nk, uint32_t* dst) {
    const int nk16 = round_up(nk, 16);
    for (int ip = 0; 2 * ip < n; ++ip)
      for (int j0 = 0; j0 < nk16; j0 += 16)
        _mm512_storeu_si512(dst + ip * kLdS + j0, pack_pairs(row_or_zero(t, kLdS, 2 * ip, n, j0, nk),
                                                             row_or_zero(t, kLdS, 2 * ip + 1, n, j0, nk)));
  }

  // [n x 64] fp32 tile -> [n x 64] bf16 (columns nk..round_up(nk, 32) zero): rows of key-pair words.
  static void round_rows(const float* t, int n, int nk, uint32_t* dst) {
    const int nk32 = round_up(nk, 32);
    for (int i = 0; i < n; ++i)
      for (int j0 = 0; j0 < nk32; j0 += 32)
        _mm512_storeu_si512(dst + i * (kLdS / 2) + j0 / 2,
                            (__m512i)_mm512_cvtne2ps_pbh(row_or_zero(t, kLdS, i, n, j0 + 16, nk),
                                                         row_or_zero(t, kLdS, i, n, j0, nk)));
  }

  // The tiles of one 64-key block.
  struct KeyTiles {
    uint32_t* ktp;  // [Dp/2 x 64] words: K^T, head-dim pairs
    uint32_t* vtp;  // [Dp/2 x 64] words: V^T, head-dim pairs
    uint32_t* kpp;  // [32 x Dp] words: K, key pairs
    float* dkt;     // [Dp x 64]: dK^T (unscaled); the two-pass dQ block [64 x Dp]
    float* dvt;     // [Dp x 64]: dV^T
  };

  // Key blocks that share each loaded query block (attention_tiles.h): the fused item takes 128 keys per pass
  // over the queries, so that rotating, rounding and pairing a query block's Q and dO rows (~20% of the time
  // with one key block, by perf) is paid once per 128 keys.
  static constexpr int kKeyBlocks = kAttnBf16BwdKeyBlocks;

  // One thread's tiles (attn_thread_floats: bwd_bf16).
  struct Tiles {
    KeyTiles key[kKeyBlocks];
    uint32_t* krows;  // [64 x Dp/2] words: K rows (bf16), then V rows
    uint32_t* qr;     // [64 x Dp/2] words: Q rows (bf16)
    uint32_t* dor;    // [64 x Dp/2] words: dO rows
    uint32_t* qpp;    // [32 x Dp] words: Q, query pairs
    uint32_t* dopp;   // [32 x Dp] words: dO, query pairs
    float* s;         // [64 x 64]: S, then P
    float* dp;        // [64 x 64]: dP, then dS
    uint32_t* pq;     // [32 x 64] words: P, query pairs
    uint32_t* dsq;    // [32 x 64] words: dS, query pairs
    uint32_t* dsr;    // [64 x 32] words: dS rows (bf16)
    float* in;        // [Dp]
    float* rot;       // [Dp]
  };

  Tiles tiles(float* w) const {
    const int Dp = a.Dp, Dp2 = Dp / 2;
    Tiles t;
    for (KeyTiles& kt : t.key) {
      kt.ktp = reinterpret_cast<uint32_t*>(w);
      kt.vtp = kt.ktp + Dp2 * BK;
      kt.kpp = kt.vtp + Dp2 * BK;
      kt.dkt = reinterpret_cast<float*>(kt.kpp + BK / 2 * Dp);
      kt.dvt = kt.dkt + Dp * BK;
      w = kt.dvt + Dp * BK;
    }
    t.krows = reinterpret_cast<uint32_t*>(w);
    t.qr = t.krows + BK * Dp2;
    t.dor = t.qr + BQ * Dp2;
    t.qpp = t.dor + BQ * Dp2;
    t.dopp = t.qpp + BQ / 2 * Dp;
    t.s = reinterpret_cast<float*>(t.dopp + BQ / 2 * Dp);
    t.dp = t.s + BQ * kLdS;
    t.pq = reinterpret_cast<uint32_t*>(t.dp + BQ * kLdS);
    t.dsq = t.pq + BQ / 2 * kLdS;
    t.dsr = t.dsq + BQ / 2 * kLdS;
    t.in = reinterpret_cast<float*>(t.dsr + BQ * kLdS / 2);
    t.rot = t.in + Dp;
    return t;
  }

  // The key block [k0, k0 + nk) of head h: K^T and V^T head-dim pairs, K key pairs (padded to Dp with zeros:
  // dQ's product is Dp columns wide).
  void load_keys(const Tiles& t, const KeyTiles& kt, int h, int64_t k0, int nk, int64_t end) const {
    const AttentionParams& p = a.p;
    const bf16* kx = static_cast<const bf16*>(p.k);
    const bf16* vx = static_cast<const bf16*>(p.v);
    const int D2 = a.D / 2, Dp2 = a.Dp / 2;
    for (int j = 0; j < nk; ++j)
      rotated_bf16_row(a, kx + (k0 + j) * p.k_stride_token + h * p.k_stride_head, k0 + j, t.in, t.rot,
                       reinterpret_cast<uint16_t*>(t.krows + j * Dp2));
    transpose_words(t.krows, Dp2, nk, D2, kt.ktp, BK);
    pair_rows(t.krows, nk, kt.kpp);
    for (int j = 0; j < nk; ++j)
      plain_row(vx, p.v_stride_token, p.v_stride_head, h, k0 + j, reinterpret_cast<uint16_t*>(t.krows + j * Dp2));
    transpose_words(t.krows, Dp2, nk, D2, kt.vtp, BK);
    a.prefetch_rows(kx, p.k_stride_token, p.k_stride_head, h, k0 + BK, end);
    a.prefetch_rows(vx, p.v_stride_token, p.v_stride_head, h, k0 + BK, end);
  }

  // The query block [q0, q0 + nq) of head h: Q and dO rows, and (with `pairs`) their query pairs.
  void load_queries(const Tiles& t, int h, int64_t q0, int nq, int64_t end, bool pairs) const {
    const AttentionParams& p = a.p;
    const bf16* qx = static_cast<const bf16*>(p.q);
    const bf16* dox = static_cast<const bf16*>(p.dout);
    const int Dp2 = a.Dp / 2;
    for (int i = 0; i < nq; ++i) {
      rotated_bf16_row(a, qx + (q0 + i) * p.q_stride_token + h * p.q_stride_head, q0 + i, t.in, t.rot,
                       reinterpret_cast<uint16_t*>(t.qr + i * Dp2));
      plain_row(dox, p.dout_stride_token, p.dout_stride_head, h, q0 + i, reinterpret_cast<uint16_t*>(t.dor + i * Dp2));
    }
    a.prefetch_rows(qx, p.q_stride_token, p.q_stride_head, h, q0 + BQ, end);
    a.prefetch_rows(dox, p.dout_stride_token, p.dout_stride_head, h, q0 + BQ, end);
    if (pairs) {
      pair_rows(t.qr, nq, t.qpp);
      pair_rows(t.dor, nq, t.dopp);
    }
  }

  // P (in s) and dS (in dp) of the tile (queries q0.., keys of the loaded block) of a segment of len tokens:
  // S = Q K^T and dP = dO V^T, then Attention::softmax_grad on S * scale.
  void tile_grads(const Tiles& t, const KeyTiles& kt, int h, int64_t q0, int nq, int nk, int64_t len) const {
    const AttentionParams& p = a.p;
    const int D2 = a.D / 2, Dp2 = a.Dp / 2, nk16 = round_up(nk, VW);
    dot_gemm<BcastMode::kStore>(t.qr, Dp2, 1, kt.ktp, BK, t.s, kLdS, nq, nk16, D2);   // S = Q K^T (unscaled)
    dot_gemm<BcastMode::kStore>(t.dor, Dp2, 1, kt.vtp, BK, t.dp, kLdS, nq, nk16, D2);  // dP = dO V^T
    const __m512 scale = _mm512_set1_ps(p.scale);
    for (int i = 0; i < nq; ++i)
      for (int j = 0; j < nk16; j += 16)
        _mm512_storeu_ps(t.s + i * kLdS + j, _mm512_mul_ps(_mm512_loadu_ps(t.s + i * kLdS + j), scale));
    a.softmax_grad(t.s, t.dp, p.lse + h * a.NT + q0, a.delta + h * a.NT + q0, nq, nk, len <= BK);
  }

  // dV^T += dO^T P and dK^T += Q^T dS over the tile's query pairs.
  void add_key_grads(const Tiles& t, const KeyTiles& kt, int nq, int nk) const {
    const int D = a.D, Dp = a.Dp, nq2 = (nq + 1) / 2, nk16 = round_up(nk, VW);
    pack_row_pairs(t.s, nq, nk, t.pq);
    pack_row_pairs(t.dp, nq, nk, t.dsq);
    dot_gemm<BcastMode::kAdd>(t.dopp, 1, Dp, t.pq, kLdS, kt.dvt, BK, D, nk16, nq2);
    dot_gemm<BcastMode::kAdd>(t.qpp, 1, Dp, t.dsq, kLdS, kt.dkt, BK, D, nk16, nq2);
  }

  // dq[nq x Dp] += dS K over the tile's key pairs.
  void add_query_grads(const Tiles& t, const KeyTiles& kt, int nq, int nk, float* dq) const {
    round_rows(t.dp, nq, nk, t.dsr);
    dot_gemm<BcastMode::kAdd>(t.dsr, kLdS / 2, 1, kt.kpp, a.Dp, dq, a.Dp, nq, a.Dp, (nk + 1) / 2);
  }

  // dK (times the scale) and dV of the key block from dK^T and dV^T, rotated back.
  void write_key_grads(const Tiles& t, const KeyTiles& kt, int h, int64_t k0, int nk) const {
    const AttentionParams& p = a.p;
    bf16* dkx = static_cast<bf16*>(p.dk);
    bf16* dvx = static_cast<bf16*>(p.dv);
    for (int j = 0; j < nk; ++j) {
      bf16* dkr = dkx + (k0 + j) * p.dk_stride_token + h * p.dk_stride_head;
      bf16* dvr = dvx + (k0 + j) * p.dv_stride_token + h * p.dv_stride_head;
      for (int d = 0; d < a.D; ++d) t.in[d] = kt.dkt[d * BK + j];
      a.rotate_row(t.in, k0 + j, -1.0f, p.scale, t.rot);
      for (int d = 0; d < a.D; ++d) {
        dkr[d] = from_float<bf16>(t.rot[d]);
        dvr[d] = from_float<bf16>(kt.dvt[d * BK + j]);
      }
    }
  }

  // dQ (times the scale) of n queries from dq[n x Dp], rotated back.
  void write_query_grads(const Tiles& t, int h, int64_t q0, int64_t n, const float* dq) const {
    const AttentionParams& p = a.p;
    bf16* dqx = static_cast<bf16*>(p.dq);
    for (int64_t i = 0; i < n; ++i) {
      bf16* dqr = dqx + (q0 + i) * p.dq_stride_token + h * p.dq_stride_head;
      a.rotate_row(dq + i * a.Dp, q0 + i, -1.0f, p.scale, t.rot);
      for (int d = 0; d < a.D; ++d) dqr[d] = from_float<bf16>(t.rot[d]);
    }
  }

  // dK and dV of `blocks` (<= kKeyBlocks) consecutive key blocks from k0; with dqa (the fused item) also
  // dQ += dS K into dqa [len x Dp].
  void key_blocks(const Tiles& t, int h, int64_t start, int64_t len, int64_t k0, int blocks, float* dqa) const {
    const int64_t end = start + len;
    int nk[kKeyBlocks];
    for (int b = 0; b < blocks; ++b) {
      const int64_t kb = k0 + b * BK;
      nk[b] = static_cast<int>(end - kb < BK ? end - kb : BK);
      load_keys(t, t.key[b], h, kb, nk[b], end);
      std::memset(t.key[b].dkt, 0, sizeof(float) * a.D * BK);
      std::memset(t.key[b].dvt, 0, sizeof(float) * a.D * BK);
    }
    for (int64_t q0 = start; q0 < end; q0 += BQ) {
      const int nq = static_cast<int>(end - q0 < BQ ? end - q0 : BQ);
      load_queries(t, h, q0, nq, end, true);
      for (int b = 0; b < blocks; ++b) {
        tile_grads(t, t.key[b], h, q0, nq, nk[b], len);
        add_key_grads(t, t.key[b], nq, nk[b]);
        if (dqa != nullptr) add_query_grads(t, t.key[b], nq, nk[b], dqa + (q0 - start) * a.Dp);
      }
    }
    for (int b = 0; b < blocks; ++b) write_key_grads(t, t.key[b], h, k0 + b * BK, nk[b]);
  }

  // Fused: one (segment, head) item, FlashAttention-2's loop (dQ accumulating in dq_accum).
  void fused_item(int64_t item, float* w) const {
    const AttentionParams& p = a.p;
    const int64_t seg = item / a.H;
    const int h = static_cast<int>(item - seg * a.H);
    const int64_t start = p.cu_seqlens[seg], len = p.cu_seqlens[seg + 1] - start;
    if (len <= a.kTinySegment) return a.backward_tiny_segment({h, start, static_cast<int>(len), start, len}, w);
    const Tiles t = tiles(w);
    float* dqa = a.dq_accum + (static_cast<int64_t>(h) * a.NT + start) * a.Dp;  // [len x Dp]
    std::memset(dqa, 0, sizeof(float) * len * a.Dp);
    for (int64_t k0 = start; k0 < start + len; k0 += kKeyBlocks * BK) {
      const int64_t left_blocks = (start + len - k0 + BK - 1) / BK;
      key_blocks(t, h, start, len, k0, static_cast<int>(left_blocks < kKeyBlocks ? left_blocks : kKeyBlocks), dqa);
    }
    write_query_grads(t, h, start, len, dqa);
  }

  // Two-pass, pass 1: one (segment, head, 64-key block): dK, dV (a tiny segment: all of its backward).
  void kv_item(int64_t item, float* w) const {
    const auto rows = a.item_rows(item, BK);
    if (rows.seg_len <= a.kTinySegment) return a.backward_tiny_segment(rows, w);
    key_blocks(tiles(w), rows.head, rows.seg_start, rows.seg_len, rows.first, 1, nullptr);
  }

  // Two-pass, pass 2: one (segment, head, 64-query block): dQ = sum over the key blocks of dS K.
  void q_item(int64_t item, float* w) const {
    const auto rows = a.item_rows(item, BQ);
    if (rows.seg_len <= a.kTinySegment) return;  // pass 1 wrote its dq
    const Tiles t = tiles(w);
    const int h = rows.head, nq = rows.count;
    const int64_t start = rows.seg_start, len = rows.seg_len, q0 = rows.first;
    float* dq = t.key[0].dkt;  // [64 x Dp]
    std::memset(dq, 0, sizeof(float) * nq * a.Dp);
    load_queries(t, h, q0, nq, start + len, false);
    for (int64_t k0 = start; k0 < start + len; k0 += BK) {
      const int nk = static_cast<int>(start + len - k0 < BK ? start + len - k0 : BK);
      load_keys(t, t.key[0], h, k0, nk, start + len);
      tile_grads(t, t.key[0], h, q0, nq, nk, len);
      add_query_grads(t, t.key[0], nq, nk, dq);
    }
    write_query_grads(t, h, q0, nq, dq);
  }

  void run() const {
    const AttentionParams& p = a.p;
    const bool fused = attn_backward_fused(p.num_segments, a.H, p.num_threads);
    const int64_t blocks = a.prepare(BQ);  // the cos/sin table; the 64-row blocks (the two-pass items)
    static_assert(BQ == BK, "the two passes share one work-item list");
    a.compute_delta();
    const int64_t items = fused ? p.num_segments * a.H : blocks;
#pragma omp parallel num_threads(p.num_threads)
    {
      float* w = a.thread_tiles(omp_get_thread_num());
      if (fused) {
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; ++it) fused_item(it, w);
      } else {
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; ++it) kv_item(it, w);
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; ++it) q_item(it, w);
      }
    }
  }
};

}  // namespace

template <int kD>
void backward_bf16_dot(const AttentionParams& p) {
  Bf16DotBackward<kD>(p).run();
}

#define VL3FAST_INSTANTIATE_BF16_DOT(D) template void backward_bf16_dot<D>(const AttentionParams&);
VL3FAST_CPU_ATTN_FAST_HEAD_DIMS(VL3FAST_INSTANTIATE_BF16_DOT)
VL3FAST_INSTANTIATE_BF16_DOT(0)
#undef VL3FAST_INSTANTIATE_BF16_DOT

}  // namespace vl3fast::cpu::VL3FAST_ISA_NS

#endif  // __AVX512BF16__
