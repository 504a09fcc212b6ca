// Test-only views of the CUDA attention index helpers (vl3fast/attention_tc.h, attention_simple.h), run on
// the CPU so that CPU CI checks the GPU's index math (tests/ops/test_attention_cuda_helpers.py, and the warp
// emulator tests/ops/test_attention_cuda_emulator.py through _attn_tc_offsets).  Not part of the API.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "bindings/common.h"
#include "vl3fast/attention_simple.h"
#include "vl3fast/attention_tc.h"
#include "vl3fast/tensor_ref.h"

namespace py = pybind11;

namespace vl3fast::bindings {
namespace {

// The block table the device scan builds (same per-segment helper, summed serially) and the decoded work
// item of every index of the upper-bound grid (plus two past it).
py::dict attn_tc_plan(const std::vector<int32_t>& cu_seqlens, int64_t num_tokens, int block, int64_t max_seqlen) {
  expect(!cu_seqlens.empty(), "cu_seqlens: expected [S + 1]");
  expect(block > 0, "block must be positive");
  const int64_t S = static_cast<int64_t>(cu_seqlens.size()) - 1;
  std::vector<int32_t> start(S + 1, 0);
  for (int64_t s = 0; s < S; ++s)
    start[s + 1] = start[s] + static_cast<int32_t>(attn_tc::segment_blocks(cu_seqlens.data(), s, num_tokens, block));
  const int64_t bound = attn_tc::work_items_upper_bound(num_tokens, S, block, max_seqlen);
  py::list items;
  for (int64_t w = 0; w < bound + 2; ++w) {
    const attn_tc::WorkItem it = attn_tc::decode_work_item(start.data(), cu_seqlens.data(), S, num_tokens, block, w);
    items.append(py::make_tuple(it.segment, it.block, it.row_begin, it.rows, it.seg_begin, it.seg_length));
  }
  py::dict d;
  d["upper_bound"] = bound;
  d["block_start"] = start;
  d["items"] = items;
  return d;
}

// The offsets both CUDA workspaces start with (attn_tc::WorkspaceHead).
py::dict head_layout(const attn_tc::WorkspaceHead& w) {
  py::dict d;
  d["status"] = w.status;
  d["block_start"] = w.block_start;
  d["cos_sin"] = w.cos_sin;
  return d;
}

py::dict attn_tc_layout(int64_t num_tokens, int64_t num_segments, int num_heads, int head_dim, bool backward) {
  const attn_tc::Workspace w = attn_tc::workspace_layout(num_tokens, num_segments, num_heads, head_dim, backward);
  py::dict d = head_layout(w);
  d["k_rot"] = w.k_rot;
  d["q_rot"] = w.q_rot;
  d["delta"] = w.delta;
  d["dq_accum"] = w.dq_accum;
  d["total"] = w.total;
  d["qk_dim"] = attn_tc::qk_dim(head_dim);
  d["row_stride_qk"] = attn_tc::row_stride(attn_tc::qk_dim(head_dim));
  d["row_stride_v"] = attn_tc::row_stride(head_dim);
  d["bwd_block_q"] = attn_tc::bwd_block_q(head_dim);
  d["fwd_smem"] = attn_tc::fwd_smem_bytes(head_dim);
  d["bwd_smem"] = attn_tc::bwd_smem_bytes(head_dim);
  d["block_m"] = attn_tc::kBlockM;
  d["block_n"] = attn_tc::kBlockN;
  return d;
}

// Per lane: the fragment coordinates the kernels use (accumulator elements and ldmatrix row addresses).
py::dict attn_tc_fragments() {
  py::list c_rc, a, bn, bk, ak;
  for (int lane = 0; lane < 32; ++lane) {
    py::list e;
    for (int i = 0; i < 4; ++i) e.append(py::make_tuple(attn_tc::frag_c_row(lane, i), attn_tc::frag_c_col(lane, i)));
    c_rc.append(e);
    a.append(py::make_tuple(attn_tc::ldsm_a_row(lane), attn_tc::ldsm_a_col(lane)));
    bn.append(py::make_tuple(attn_tc::ldsm_bn_row(lane), attn_tc::ldsm_bn_col(lane)));
    bk.append(py::make_tuple(attn_tc::ldsm_bk_row(lane), attn_tc::ldsm_bk_col(lane)));
    ak.append(py::make_tuple(attn_tc::ldsm_ak_row(lane), attn_tc::ldsm_ak_col(lane)));
  }
  py::dict d;
  d["c"] = c_rc;
  d["a"] = a;
  d["b_nmajor"] = bn;
  d["b_kmajor"] = bk;
  d["a_kmajor"] = ak;
  return d;
}

// ---- the warp emulator's addresses, the device-side checks and the grid-stride loop, the simple kernel --
using namespace ::vl3fast::attn_tc;
using Lanes = std::vector<int>;

template <typename F>
Lanes lanes(F&& f) {
  Lanes out(32);
  for (int lane = 0; lane < 32; ++lane) out[lane] = f(lane);
  return out;
}

py::dict attn_tc_offsets(int head_dim) {
  bool supported = false;
#define VL3FAST_HD_IS(DIM) supported = supported || head_dim == DIM;
  VL3FAST_ATTN_TC_HEAD_DIMS(VL3FAST_HD_IS)
#undef VL3FAST_HD_IS
  expect(supported, "_attn_tc_offsets: head dim " + std::to_string(head_dim) + " is not compiled for tensor cores");
  const int D = head_dim, DQ = qk_dim(D), SQ = row_stride(DQ), SV = row_stride(D);
  const int KS = DQ / 16, NTD = D / 8, NTS = kBlockN / 8, HALF = D / 2, PAIRS = DQ / 2;
  const int BQ = bwd_block_q(D), SS = row_stride(BQ), NTQ = BQ / 8, MT = BQ / 16, G = kWarps / MT, NTG = NTD / G;
  py::dict d;
  d["shape"] = py::dict(py::arg("D") = D, py::arg("DQ") = DQ, py::arg("SQ") = SQ, py::arg("SV") = SV,
                        py::arg("KS") = KS, py::arg("NTD") = NTD, py::arg("NTS") = NTS, py::arg("BQ") = BQ,
                        py::arg("SS") = SS, py::arg("NTQ") = NTQ, py::arg("MT") = MT, py::arg("G") = G,
                        py::arg("NTG") = NTG, py::arg("block_m") = kBlockM, py::arg("block_n") = kBlockN,
                        py::arg("warps") = kWarps, py::arg("fwd_smem_bytes") = fwd_smem_bytes(D),
                        py::arg("bwd_smem_bytes") = bwd_smem_bytes(D));
  const FwdSmem f = fwd_smem(D);
  d["fwd_smem"] = py::dict(py::arg("k0") = f.k0, py::arg("v0") = f.v0, py::arg("q0") = f.q0,
                           py::arg("k_buf") = f.k_buf, py::arg("v_buf") = f.v_buf);
  const BwdSmem b = bwd_smem(D);
  d["bwd_smem"] = py::dict(py::arg("k0") = b.k0, py::arg("v0") = b.v0, py::arg("q0") = b.q0, py::arg("do0") = b.do0,
                           py::arg("ds0") = b.ds0, py::arg("stats_byte") = b.stats_byte);

  // Forward.  Q tile stores (loop i over kBlockM x PAIRS: row r, pair j -> two channels).
  std::vector<std::vector<int>> q_store;
  for (int i = 0; i < kBlockM * PAIRS; ++i) {
    const int r = i / PAIRS, j = i % PAIRS;
    q_store.push_back({r, j, r * SQ + fwd_q_pair_channel(j, D, 0), r * SQ + fwd_q_pair_channel(j, D, 1)});
  }
  d["fwd_q_store"] = q_store;
  std::vector<std::vector<int>> k_chunks, v_chunks;
  for (int i = 0; i < kBlockN * (DQ / 8); ++i) k_chunks.push_back({i / (DQ / 8), i % (DQ / 8), chunk_offset(i / (DQ / 8), i % (DQ / 8), SQ)});
  for (int i = 0; i < kBlockN * (D / 8); ++i) v_chunks.push_back({i / (D / 8), i % (D / 8), chunk_offset(i / (D / 8), i % (D / 8), SV)});
  d["fwd_k_chunks"] = k_chunks;
  d["fwd_v_chunks"] = v_chunks;
  std::vector<std::vector<Lanes>> q_frag(kWarps), k_frag(NTS / 2), v_frag(kBlockN / 16);
  std::vector<Lanes> v_last;
  for (int w = 0; w < kWarps; ++w)
    for (int kk = 0; kk < KS; ++kk) q_frag[w].push_back(lanes([&](int l) { return fwd_q_frag(w, kk, l, SQ); }));
  for (int np = 0; np < NTS / 2; ++np)
    for (int kk = 0; kk < KS; ++kk) k_frag[np].push_back(lanes([&](int l) { return fwd_k_frag(np, kk, l, SQ); }));
  for (int kk = 0; kk < kBlockN / 16; ++kk) {
    for (int np = 0; np < NTD / 2; ++np) v_frag[kk].push_back(lanes([&](int l) { return fwd_v_frag(kk, np, l, SV); }));
    if (NTD % 2 == 1) v_last.push_back(lanes([&](int l) { return fwd_v_frag_last(kk, NTD, l, SV); }));
  }
  d["fwd_q_frag"] = q_frag;  // [warp][kk][lane]
  d["fwd_k_frag"] = k_frag;  // [np][kk][lane]
  d["fwd_v_frag"] = v_frag;  // [kk][np][lane]
  d["fwd_v_frag_last"] = v_last;  // [kk][lane] (odd D/8 only)
  std::vector<std::vector<Lanes>> out_row(kWarps);
  std::vector<Lanes> out_col;
  for (int w = 0; w < kWarps; ++w)
    for (int r = 0; r < 2; ++r) out_row[w].push_back(lanes([&](int l) { return out_frag_row(w, l, r); }));
  for (int t = 0; t < NTD; ++t) out_col.push_back(lanes([&](int l) { return out_frag_col(t, l); }));
  d["out_row"] = out_row;  // [warp][r][lane]
  d["out_col"] = out_col;  // [t][lane]

  // Backward.  K/V and Q/dO chunk loads (DQ / 8 chunks per row; V and dO zero-fill chunks past D / 8).
  std::vector<std::vector<int>> kv_chunks, qdo_chunks;
  for (int i = 0; i < kBlockN * (DQ / 8); ++i) kv_chunks.push_back({i / (DQ / 8), i % (DQ / 8), chunk_offset(i / (DQ / 8), i % (DQ / 8), SQ)});
  for (int i = 0; i < BQ * (DQ / 8); ++i) qdo_chunks.push_back({i / (DQ / 8), i % (DQ / 8), chunk_offset(i / (DQ / 8), i % (DQ / 8), SQ)});
  d["bwd_kv_chunks"] = kv_chunks;
  d["bwd_qdo_chunks"] = qdo_chunks;
  std::vector<std::vector<Lanes>> kv_frag(kWarps), qdo_frag(NTQ / 2), rows_frag(BQ / 16), ds_frag(kBlockN / 16);
  std::vector<Lanes> rows_last;
  for (int w = 0; w < kWarps; ++w)
    for (int kk = 0; kk < KS; ++kk) kv_frag[w].push_back(lanes([&](int l) { return bwd_kv_frag(w, kk, l, SQ); }));
  for (int np = 0; np < NTQ / 2; ++np)
    for (int kk = 0; kk < KS; ++kk) qdo_frag[np].push_back(lanes([&](int l) { return bwd_qdo_frag(np, kk, l, SQ); }));
  for (int kk = 0; kk < BQ / 16; ++kk) {
    for (int np = 0; np < NTD / 2; ++np)
      rows_frag[kk].push_back(lanes([&](int l) { return bwd_rows_frag(kk, 0, np, l, SQ); }));
    if (NTD % 2 == 1) rows_last.push_back(lanes([&](int l) { return bwd_rows_frag_last(kk, 0, NTD, l, SQ); }));
  }
  d["bwd_kv_frag"] = kv_frag;      // [warp][kk][lane]
  d["bwd_qdo_frag"] = qdo_frag;    // [np][kk][lane]
  d["bwd_rows_frag"] = rows_frag;  // [kk][np][lane]: dV's dO and dK's Q operands
  d["bwd_rows_frag_last"] = rows_last;
  std::vector<std::vector<std::vector<std::vector<Lanes>>>> ds_store(kWarps);  // [warp][kk][half][e] e: i = 0, 2
  for (int w = 0; w < kWarps; ++w)
    for (int kk = 0; kk < BQ / 16; ++kk) {
      ds_store[w].emplace_back();
      for (int half = 0; half < 2; ++half) {
        ds_store[w][kk].emplace_back();
        for (int i : {0, 2}) ds_store[w][kk][half].push_back(lanes([&](int l) { return bwd_ds_store(w, kk, half, l, i, SS); }));
      }
    }
  d["bwd_ds_store"] = ds_store;
  std::vector<std::vector<std::vector<Lanes>>> dq_b(kBlockN / 16);  // [kk][grp][np][lane]
  std::vector<std::vector<Lanes>> dq_b_last(kBlockN / 16);          // [kk][grp][lane]
  for (int kk = 0; kk < kBlockN / 16; ++kk) {
    ds_frag[kk].clear();
    for (int mt = 0; mt < MT; ++mt) ds_frag[kk].push_back(lanes([&](int l) { return bwd_ds_frag(kk, mt, l, SS); }));
    for (int grp = 0; grp < G; ++grp) {
      dq_b[kk].emplace_back();
      for (int np = 0; np < NTG / 2; ++np)
        dq_b[kk][grp].push_back(lanes([&](int l) { return bwd_rows_frag(kk, grp * NTG * 8, np, l, SQ); }));
      if (NTG % 2 == 1) dq_b_last[kk].push_back(lanes([&](int l) { return bwd_rows_frag_last(kk, grp * NTG * 8, NTG, l, SQ); }));
    }
  }
  d["bwd_ds_frag"] = ds_frag;  // [kk][mt][lane]
  d["bwd_dq_b"] = dq_b;
  d["bwd_dq_b_last"] = dq_b_last;
  std::vector<std::vector<Lanes>> dq_row(MT);                  // [mt][i][lane]
  std::vector<std::vector<std::vector<Lanes>>> dq_col(G);      // [grp][t][i][lane]
  for (int mt = 0; mt < MT; ++mt)
    for (int i = 0; i < 4; ++i) dq_row[mt].push_back(lanes([&](int l) { return bwd_dq_row(mt, l, i); }));
  for (int grp = 0; grp < G; ++grp)
    for (int t = 0; t < NTG; ++t) {
      dq_col[grp].emplace_back();
      for (int i = 0; i < 4; ++i) dq_col[grp][t].push_back(lanes([&](int l) { return bwd_dq_col(grp, NTG, t, l, i); }));
    }
  d["bwd_dq_row"] = dq_row;
  d["bwd_dq_col"] = dq_col;
  (void)HALF;
  return d;
}

// The block-table scan's device-side checks and the kernels' grid-stride loop, on the host: status bits,
// the launched grid (from the hint) and, per CTA, the work items it computes (segment, block, rows).
py::dict attn_tc_schedule(const std::vector<int32_t>& cu_seqlens, int64_t num_tokens, int block, int64_t max_seqlen) {
  expect(!cu_seqlens.empty(), "cu_seqlens: expected [S + 1]");
  const int64_t S = static_cast<int64_t>(cu_seqlens.size()) - 1;
  int32_t status = S > 0 ? 0 : no_segment_status(cu_seqlens.data(), num_tokens);
  std::vector<int32_t> start(S + 1, 0);
  for (int64_t s = 0; s < S; ++s) {
    status |= segment_status(cu_seqlens.data(), s, S, num_tokens, max_seqlen);
    start[s + 1] = start[s] + static_cast<int32_t>(segment_blocks(cu_seqlens.data(), s, num_tokens, block));
  }
  if (status & kStatusBadCuSeqlens) start[S] = 0;
  const int64_t grid = launch_grid_x(num_tokens, S, block, max_seqlen);
  py::list per_cta;
  for (int64_t cta = 0; cta < grid; ++cta) {
    py::list items;
    for (int64_t w = cta;; w += grid) {  // as in the kernels
      const WorkItem it = decode_work_item(start.data(), cu_seqlens.data(), S, num_tokens, block, w);
      if (it.segment < 0) break;
      items.append(py::make_tuple(it.segment, it.block, it.row_begin, it.rows));
    }
    per_cta.append(items);
  }
  py::dict d;
  d["status"] = status;
  d["bad_cu_seqlens"] = (status & kStatusBadCuSeqlens) != 0;
  d["max_seqlen_too_small"] = (status & kStatusMaxSeqlenTooSmall) != 0;
  d["grid"] = grid;
  d["per_cta"] = per_cta;
  return d;
}

py::dict attn_simple_layout(int64_t num_tokens, int64_t num_segments, int num_heads, int head_dim, bool backward) {
  const attn_simple::Workspace w = attn_simple::workspace_layout(num_tokens, num_segments, num_heads, head_dim, backward);
  py::dict d = head_layout(w);
  d["delta"] = w.delta;
  d["total"] = w.total;
  d["block"] = attn_simple::kBlock;
  d["fwd_smem"] = attn_simple::fwd_smem_bytes(head_dim);
  d["bwd_smem"] = attn_simple::bwd_smem_bytes(head_dim);
  d["max_head_dim"] = ::vl3fast::kMaxHeadDim;
  return d;
}

}  // namespace

void bind_testing(py::module_& m) {
  m.def("_attn_tc_plan", &attn_tc_plan, py::arg("cu_seqlens"), py::arg("num_tokens"), py::arg("block"),
        py::arg("max_seqlen") = -1, "Test only: CUDA attention block table and work-item decoding, run on the CPU.");
  m.def("_attn_tc_layout", &attn_tc_layout, py::arg("num_tokens"), py::arg("num_segments"), py::arg("num_heads"),
        py::arg("head_dim"), py::arg("backward"), "Test only: CUDA attention workspace layout and tile sizes.");
  m.def("_attn_tc_fragments", &attn_tc_fragments, "Test only: per-lane MMA fragment coordinates of the CUDA kernels.");
  m.def("_attn_tc_offsets", &attn_tc_offsets, py::arg("head_dim"),
        "Test only: every shared-memory address the CUDA tensor-core kernels compute (attention_tc.h helpers).");
  m.def("_attn_tc_schedule", &attn_tc_schedule, py::arg("cu_seqlens"), py::arg("num_tokens"), py::arg("block"),
        py::arg("max_seqlen") = -1, "Test only: device-side input checks and the grid-stride work loop, on the CPU.");
  m.def("_attn_simple_layout", &attn_simple_layout, py::arg("num_tokens"), py::arg("num_segments"),
        py::arg("num_heads"), py::arg("head_dim"), py::arg("backward"),
        "Test only: the simple CUDA attention kernel's workspace layout and shared memory.");
}

}  // namespace vl3fast::bindings
