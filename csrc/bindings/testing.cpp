// Test-only views of the CUDA attention index helpers (vl3fast/attention_tc.h), run on the CPU so that
// CPU CI checks the GPU's index math (tests/ops/test_attention_cuda_helpers.py).  Not part of the API.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "bindings/common.h"
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

py::dict attn_tc_layout(int64_t num_tokens, int64_t num_segments, int num_heads, int head_dim, bool backward) {
  const attn_tc::Workspace w = attn_tc::workspace_layout(num_tokens, num_segments, num_heads, head_dim, backward);
  py::dict d;
  d["block_start"] = w.block_start;
  d["cos_sin"] = w.cos_sin;
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

}  // namespace

void bind_testing(py::module_& m) {
  m.def("_attn_tc_plan", &attn_tc_plan, py::arg("cu_seqlens"), py::arg("num_tokens"), py::arg("block"),
        py::arg("max_seqlen") = -1, "Test only: CUDA attention block table and work-item decoding, run on the CPU.");
  m.def("_attn_tc_layout", &attn_tc_layout, py::arg("num_tokens"), py::arg("num_segments"), py::arg("num_heads"),
        py::arg("head_dim"), py::arg("backward"), "Test only: CUDA attention workspace layout and tile sizes.");
  m.def("_attn_tc_fragments", &attn_tc_fragments, "Test only: per-lane MMA fragment coordinates of the CUDA kernels.");
}

}  // namespace vl3fast::bindings
