// pybind11 module vl3fast._C: plain functions over TensorRefs.  No torch here (DESIGN.md §3).
// Each function checks what it relies on, builds a params struct and calls the CPU kernel table
// or the CUDA launcher for the tensors' device.  The GIL is released while kernels run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <string>

#include <omp.h>

#include "cpu/attention_tiles.h"
#include "cpu/isa.h"
#include "cpu/positions.h"
#include "vl3fast/attention_simple.h"
#include "vl3fast/attention_tc.h"
#include "vl3fast/params.h"
#include "vl3fast/positions.h"
#include "vl3fast/pruning.h"
#include "vl3fast/tensor_ref.h"
#ifdef VL3FAST_WITH_CUDA
#include "cuda/launchers.h"
#endif

#ifndef VL3FAST_VERSION
#define VL3FAST_VERSION "0+unknown"
#endif

namespace py = pybind11;
using namespace vl3fast;

void register_attention_test_bindings(py::module_& m);  // bindings_attention_test.cpp

namespace {

// All tensors of one call must live on the same device; returns it (-1 for host).
int common_device(std::initializer_list<const TensorRef*> refs, const char* op) {
  const int device = (*refs.begin())->device_index;
  for (const TensorRef* r : refs)
    expect(r->device_index == device, std::string(op) + ": all tensors must be on the same device");
#ifndef VL3FAST_WITH_CUDA
  expect(device < 0, std::string(op) + ": vl3fast was built without its CUDA backend");
#endif
  return device;
}

void rope2d_position_ids(const TensorRef& item_table, const TensorRef& pos_hw, const TensorRef& cu_seqlens,
                         uintptr_t stream) {
  expect_ref(item_table, "item_table", DType::kInt64, 2);
  expect_ref(pos_hw, "pos_hw", DType::kInt32, 2);
  expect_ref(cu_seqlens, "cu_seqlens", DType::kInt32, 1);
  expect(item_table.sizes[1] == kItemFields && is_contiguous(item_table), "item_table: expected contiguous [N, 6]");
  expect(pos_hw.sizes[1] == 2 && is_contiguous(pos_hw), "pos_hw: expected contiguous [T, 2]");
  expect(is_contiguous(cu_seqlens) && cu_seqlens.sizes[0] >= 1, "cu_seqlens: expected contiguous [S + 1]");
  const int device = common_device({&item_table, &pos_hw, &cu_seqlens}, "rope2d_position_ids");
  PositionIdsParams p;
  p.item_table = static_cast<const int64_t*>(item_table.data);
  p.num_items = item_table.sizes[0];
  p.num_tokens = pos_hw.sizes[0];
  p.num_frames = cu_seqlens.sizes[0] - 1;
  p.pos_hw = static_cast<int32_t*>(pos_hw.data);
  p.cu_seqlens = static_cast<int32_t*>(cu_seqlens.data);
  expect(p.num_items > 0 || (p.num_tokens == 0 && p.num_frames == 0), "item_table: empty but tokens requested");
  if (p.num_items == 0) {
    if (device < 0) p.cu_seqlens[0] = 0;
#ifdef VL3FAST_WITH_CUDA
    else cuda::rope2d_position_ids(p, device, stream);
#endif
    return;
  }
#ifdef VL3FAST_WITH_CUDA
  if (device >= 0) return cuda::rope2d_position_ids(p, device, stream);
#endif
  cpu::rope2d_position_ids(p);
}

void apply_rope2d(const TensorRef& x, const TensorRef& pos_hw, const TensorRef& inv_freq, const TensorRef& out,
                  bool inverse, uintptr_t stream) {
  expect(x.ndim == 3 && out.ndim == 3, "apply_rope2d: x and out must be [T, H, D]");
  for (int i = 0; i < 3; ++i) expect(x.sizes[i] == out.sizes[i], "apply_rope2d: out must have the shape of x");
  expect(x.dtype == out.dtype, "apply_rope2d: out must have the dtype of x");
  expect(x.strides[2] == 1 && out.strides[2] == 1, "apply_rope2d: last dim of x and out must be contiguous");
  const int64_t head_dim = x.sizes[2];
  expect(head_dim >= 4 && head_dim <= 256 && head_dim % 4 == 0,
         "apply_rope2d: head_dim must be a multiple of 4 in [4, 256], got " + std::to_string(head_dim));
  expect_ref(pos_hw, "pos_hw", DType::kInt32, 2);
  expect(pos_hw.sizes[0] == x.sizes[0] && pos_hw.sizes[1] == 2 && is_contiguous(pos_hw), "pos_hw: expected contiguous [T, 2]");
  expect_ref(inv_freq, "inv_freq", DType::kFloat32, 1);
  expect(inv_freq.sizes[0] == head_dim / 4 && is_contiguous(inv_freq), "inv_freq: expected contiguous [D / 4]");
  const int device = common_device({&x, &pos_hw, &inv_freq, &out}, "apply_rope2d");
  Rope2dParams p;
  p.x = x.data;
  p.out = out.data;
  p.x_stride_token = x.strides[0];
  p.x_stride_head = x.strides[1];
  p.out_stride_token = out.strides[0];
  p.out_stride_head = out.strides[1];
  p.pos_hw = static_cast<const int32_t*>(pos_hw.data);
  p.inv_freq = static_cast<const float*>(inv_freq.data);
  p.num_tokens = x.sizes[0];
  p.num_heads = static_cast<int32_t>(x.sizes[1]);
  p.head_dim = static_cast<int32_t>(head_dim);
  p.dtype = x.dtype;
  p.inverse = inverse;
  if (p.num_tokens == 0 || p.num_heads == 0) return;
#ifdef VL3FAST_WITH_CUDA
  if (device >= 0) return cuda::apply_rope2d(p, device, stream);
#endif
  cpu::kernels().apply_rope2d(p);
}

// ---- rope2d attention ---------------------------------------------------------------------------

// Checks one [T, H, D] operand of an attention call against q.
void expect_thd(const TensorRef& t, const TensorRef& q, const char* name) {
  expect(t.ndim == 3, std::string("rope2d_attention: ") + name + " must be [T, H, D]");
  for (int i = 0; i < 3; ++i)
    expect(t.sizes[i] == q.sizes[i], std::string("rope2d_attention: ") + name + " must have the shape of q");
  expect(t.dtype == q.dtype, std::string("rope2d_attention: ") + name + " must have the dtype of q");
  expect(t.strides[2] == 1, std::string("rope2d_attention: the last dim of ") + name + " must be contiguous");
}

int attention_threads() { return omp_get_max_threads(); }

// The attention kernel a call names (vl3fast/ops/attention.py's dispatch table decides; this only checks
// that the name fits the device).  "" means the CPU kernel for host tensors.
enum class AttnKernel { kCpu, kCudaTensorCore, kCudaSimple };
AttnKernel attention_kernel(const std::string& name, int device) {
  if (device < 0) {
    expect(name.empty() || name == "cpu", "rope2d_attention: kernel '" + name + "' cannot run host tensors (use 'cpu')");
    return AttnKernel::kCpu;
  }
  if (name == "cuda_tensor_core") return AttnKernel::kCudaTensorCore;
  if (name == "cuda_simple") return AttnKernel::kCudaSimple;
  throw std::invalid_argument("rope2d_attention: kernel '" + name +
                              "' cannot run CUDA tensors (use 'cuda_tensor_core' or 'cuda_simple'; "
                              "vl3fast.ops.attention.kernel_for picks)");
}

// Bytes of workspace the named kernel for `device_index` needs (the caller allocates it; kernels never
// allocate): the CPU layout (cpu/attention_tiles.h) for -1, the CUDA layouts (vl3fast/attention_tc.h,
// vl3fast/attention_simple.h) otherwise ("" on CUDA: the tensor-core one).
int64_t rope2d_attention_workspace_bytes(int64_t num_tokens, int64_t num_segments, int num_heads, int head_dim,
                                         bool backward, int device_index, const std::string& kernel) {
  if (device_index >= 0 && kernel == "cuda_simple")
    return attn_simple::workspace_layout(num_tokens, num_segments, num_heads, head_dim, backward).total;
  if (device_index >= 0) return attn_tc::workspace_layout(num_tokens, num_segments, num_heads, head_dim, backward).total;
  return cpu::attention_workspace_layout(num_tokens, num_segments, num_heads, head_dim, attention_threads(), backward)
      .total;
}

#ifdef VL3FAST_WITH_CUDA
// The CUDA path reads v and dout with 16-byte vector copies.
void expect_vector_aligned(const TensorRef& t, const char* name) {
  expect(reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.strides[0] % 8 == 0 && t.strides[1] % 8 == 0,
         std::string("rope2d_attention (CUDA): ") + name +
             " must be 16-byte aligned with token and head strides multiples of 8 elements");
}
#endif

// The supported CUDA matrix (vl3fast/attention_tc.h), for the ops' validation and the tests' parametrization.
py::dict attention_cuda_configs() {
  py::list dtypes, dims;
#define VL3FAST_DT_CODE(CODE, TYPE) dtypes.append(static_cast<int>(CODE));
  VL3FAST_ATTN_TC_DTYPES(VL3FAST_DT_CODE)
#undef VL3FAST_DT_CODE
#define VL3FAST_HD_ITEM(DIM) dims.append(DIM);
  VL3FAST_ATTN_TC_HEAD_DIMS(VL3FAST_HD_ITEM)
#undef VL3FAST_HD_ITEM
  py::dict d;
  d["dtypes"] = dtypes;
  d["head_dims"] = dims;
  return d;
}

// ---- test-only views of the CUDA index helpers (run on the CPU; tests/ops/test_attention_cuda_helpers.py) --

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
  d["status"] = w.status;
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

AttentionParams attention_params(const TensorRef& q, const TensorRef& k, const TensorRef& v, const TensorRef& cu_seqlens,
                                 const TensorRef& pos_hw, const TensorRef& inv_freq, const TensorRef& out,
                                 const TensorRef& lse, const TensorRef& workspace, double scale, bool backward,
                                 int device, const std::string& kernel) {
  expect(q.ndim == 3, "rope2d_attention: q must be [T, H, D]");
  expect(q.strides[2] == 1, "rope2d_attention: the last dim of q must be contiguous");
  expect_thd(k, q, "k");
  expect_thd(v, q, "v");
  expect_thd(out, q, "out");
  const int64_t head_dim = q.sizes[2];
  expect(head_dim >= 4 && head_dim <= cpu::kAttnMaxHeadDim && head_dim % 4 == 0,
         "rope2d_attention: head_dim must be a multiple of 4 in [4, 256], got " + std::to_string(head_dim));
  expect_ref(cu_seqlens, "cu_seqlens", DType::kInt32, 1);
  expect(is_contiguous(cu_seqlens) && cu_seqlens.sizes[0] >= 1, "cu_seqlens: expected contiguous [S + 1]");
  expect_ref(pos_hw, "pos_hw", DType::kInt32, 2);
  expect(pos_hw.sizes[0] == q.sizes[0] && pos_hw.sizes[1] == 2 && is_contiguous(pos_hw),
         "pos_hw: expected contiguous [T, 2]");
  expect_ref(inv_freq, "inv_freq", DType::kFloat32, 1);
  expect(inv_freq.sizes[0] == head_dim / 4 && is_contiguous(inv_freq), "inv_freq: expected contiguous [D / 4]");
  expect_ref(lse, "lse", DType::kFloat32, 2);
  expect(lse.sizes[0] == q.sizes[1] && lse.sizes[1] == q.sizes[0] && is_contiguous(lse), "lse: expected contiguous [H, T]");
  expect_ref(workspace, "workspace", DType::kUInt8, 1);
  expect(std::isfinite(scale) && scale > 0, "rope2d_attention: scale must be finite and positive");
  AttentionParams p;
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.q_stride_token = q.strides[0];
  p.q_stride_head = q.strides[1];
  p.k_stride_token = k.strides[0];
  p.k_stride_head = k.strides[1];
  p.v_stride_token = v.strides[0];
  p.v_stride_head = v.strides[1];
  p.out = out.data;
  p.out_stride_token = out.strides[0];
  p.out_stride_head = out.strides[1];
  p.lse = static_cast<float*>(lse.data);
  p.cu_seqlens = static_cast<const int32_t*>(cu_seqlens.data);
  p.pos_hw = static_cast<const int32_t*>(pos_hw.data);
  p.inv_freq = static_cast<const float*>(inv_freq.data);
  p.num_tokens = q.sizes[0];
  p.num_segments = cu_seqlens.sizes[0] - 1;
  p.num_heads = static_cast<int32_t>(q.sizes[1]);
  p.head_dim = static_cast<int32_t>(head_dim);
  p.scale = static_cast<float>(scale);
  p.dtype = q.dtype;
  p.workspace = workspace.data;
  p.workspace_bytes = workspace.sizes[0];
  p.num_threads = attention_threads();
  const int64_t needed = rope2d_attention_workspace_bytes(p.num_tokens, p.num_segments, p.num_heads, p.head_dim,
                                                          backward, device, kernel);
  expect(p.workspace_bytes >= needed, "rope2d_attention: workspace too small (" + std::to_string(p.workspace_bytes) +
                                          " < " + std::to_string(needed) + " bytes)");
  return p;
}

// The cu_seqlens values are validated here too (host memory): the kernel trusts them.
void expect_cu_seqlens_values(const AttentionParams& p) {
  expect(p.cu_seqlens[0] == 0, "cu_seqlens: must start at 0");
  for (int64_t s = 0; s < p.num_segments; ++s)
    expect(p.cu_seqlens[s + 1] >= p.cu_seqlens[s], "cu_seqlens: must be non-decreasing");
  expect(p.cu_seqlens[p.num_segments] == p.num_tokens, "cu_seqlens: last value must equal T");
}

void rope2d_attention_forward(const TensorRef& q, const TensorRef& k, const TensorRef& v, const TensorRef& cu_seqlens,
                              const TensorRef& pos_hw, const TensorRef& inv_freq, const TensorRef& out,
                              const TensorRef& lse, const TensorRef& workspace, double scale, int64_t max_seqlen,
                              uintptr_t stream, const std::string& kernel) {
  const int device = common_device({&q, &k, &v, &cu_seqlens, &pos_hw, &inv_freq, &out, &lse}, "rope2d_attention");
  const AttnKernel which = attention_kernel(kernel, device);
  AttentionParams p =
      attention_params(q, k, v, cu_seqlens, pos_hw, inv_freq, out, lse, workspace, scale, false, device, kernel);
#ifdef VL3FAST_WITH_CUDA
  if (device >= 0) {  // cu_seqlens stays on the device: checked there (no sync), the kernels clamp it
    expect(p.num_heads <= 65535, "rope2d_attention (CUDA): at most 65535 heads");
    if (which == AttnKernel::kCudaTensorCore) expect_vector_aligned(v, "v");
    if (p.num_tokens == 0 || p.num_heads == 0) return;
    return cuda::rope2d_attention_forward(
        p, max_seqlen, which == AttnKernel::kCudaSimple ? cuda::AttentionKernel::kSimple : cuda::AttentionKernel::kTensorCore,
        device, stream);
  }
#else
  (void)stream;
  (void)which;
#endif
  (void)max_seqlen;
  expect_cu_seqlens_values(p);
  if (p.num_tokens == 0 || p.num_heads == 0) return;
  cpu::kernels().rope2d_attention_forward(p);
}

void rope2d_attention_backward(const TensorRef& q, const TensorRef& k, const TensorRef& v, const TensorRef& cu_seqlens,
                               const TensorRef& pos_hw, const TensorRef& inv_freq, const TensorRef& out,
                               const TensorRef& lse, const TensorRef& dout, const TensorRef& dq, const TensorRef& dk,
                               const TensorRef& dv, const TensorRef& workspace, double scale, int64_t max_seqlen,
                               uintptr_t stream, const std::string& kernel) {
  const int device = common_device({&q, &k, &v, &cu_seqlens, &pos_hw, &inv_freq, &out, &lse, &dout, &dq, &dk, &dv},
                                   "rope2d_attention_backward");
  const AttnKernel which = attention_kernel(kernel, device);
  AttentionParams p =
      attention_params(q, k, v, cu_seqlens, pos_hw, inv_freq, out, lse, workspace, scale, true, device, kernel);
  expect_thd(dout, q, "dout");
  expect_thd(dq, q, "dq");
  expect_thd(dk, q, "dk");
  expect_thd(dv, q, "dv");
  p.dout = dout.data;
  p.dout_stride_token = dout.strides[0];
  p.dout_stride_head = dout.strides[1];
  p.dq = dq.data;
  p.dk = dk.data;
  p.dv = dv.data;
  p.dq_stride_token = dq.strides[0];
  p.dq_stride_head = dq.strides[1];
  p.dk_stride_token = dk.strides[0];
  p.dk_stride_head = dk.strides[1];
  p.dv_stride_token = dv.strides[0];
  p.dv_stride_head = dv.strides[1];
#ifdef VL3FAST_WITH_CUDA
  if (device >= 0) {
    expect(p.num_heads <= 65535, "rope2d_attention_backward (CUDA): at most 65535 heads");
    if (which == AttnKernel::kCudaTensorCore) {
      expect_vector_aligned(v, "v");
      expect_vector_aligned(dout, "dout");
    }
    if (p.num_tokens == 0 || p.num_heads == 0) return;
    return cuda::rope2d_attention_backward(
        p, max_seqlen, which == AttnKernel::kCudaSimple ? cuda::AttentionKernel::kSimple : cuda::AttentionKernel::kTensorCore,
        device, stream);
  }
#else
  (void)stream;
  (void)which;
#endif
  (void)max_seqlen;
  expect_cu_seqlens_values(p);
  if (p.num_tokens == 0 || p.num_heads == 0) return;
  cpu::kernels().rope2d_attention_backward(p);
}

// Test only (vl3fast/ops/_attention_stages.py): the tensor-core pre-passes alone on CUDA tensors, so a
// failure can be placed in the pre-pass or in the main kernel.
void attn_tc_prepass(const TensorRef& q, const TensorRef& k, const TensorRef& v, const TensorRef& cu_seqlens,
                     const TensorRef& pos_hw, const TensorRef& inv_freq, const TensorRef& out, const TensorRef& lse,
                     const TensorRef& dout, const TensorRef& workspace, double scale, int64_t max_seqlen, bool backward,
                     uintptr_t stream) {
  const int device = common_device({&q, &k, &v, &cu_seqlens, &pos_hw, &inv_freq, &out, &lse, &dout}, "_attn_tc_prepass");
  expect(device >= 0, "_attn_tc_prepass: CUDA tensors only");
  AttentionParams p = attention_params(q, k, v, cu_seqlens, pos_hw, inv_freq, out, lse, workspace, scale, backward,
                                       device, "cuda_tensor_core");
  expect_thd(dout, q, "dout");
  p.dout = dout.data;
  p.dout_stride_token = dout.strides[0];
  p.dout_stride_head = dout.strides[1];
#ifdef VL3FAST_WITH_CUDA
  expect_vector_aligned(v, "v");
  expect_vector_aligned(dout, "dout");
  cuda::rope2d_attention_prepass(p, max_seqlen, backward, device, stream);
#else
  (void)p;
  (void)max_seqlen;
  (void)stream;
#endif
}

void check_prune_table(const TensorRef& item_table) {
  expect_ref(item_table, "item_table", DType::kInt64, 2);
  expect(item_table.sizes[1] == kPruneFields && is_contiguous(item_table), "item_table: expected contiguous [N, 7]");
}

void frame_keep_mask(const TensorRef& pixels, const TensorRef& item_table, const TensorRef& keep, const TensorRef& diff,
                     int64_t num_frames, int64_t max_frame_tokens, double threshold, int64_t min_tokens, int32_t sum_lanes,
                     bool write_diff,
                     uintptr_t stream) {
  expect(pixels.ndim == 2 && is_contiguous(pixels), "frame_keep_mask: pixel_values must be a contiguous [P, C]");
  expect(pixels.dtype == DType::kFloat32 || pixels.dtype == DType::kBFloat16 || pixels.dtype == DType::kFloat16,
         "frame_keep_mask: pixel_values must be float32, bfloat16 or float16");
  check_prune_table(item_table);
  expect_ref(keep, "keep", DType::kBool, 1);
  expect_ref(diff, "diff", DType::kFloat32, 1);
  expect(is_contiguous(keep) && is_contiguous(diff), "keep, diff: expected contiguous [M]");
  expect(!write_diff || diff.sizes[0] == keep.sizes[0], "diff: expected the size of keep");
  expect(threshold >= 0.0, "frame_keep_mask: threshold must be >= 0");
  expect(min_tokens >= 0, "frame_keep_mask: min_tokens must be >= 0");
  expect(sum_lanes == 1 || sum_lanes == 8, "frame_keep_mask: sum_lanes must be 1 or 8");
  const int device = common_device({&pixels, &item_table, &keep, &diff}, "frame_keep_mask");
  FrameKeepParams p;
  p.pixels = pixels.data;
  p.dtype = pixels.dtype;
  p.row_stride = pixels.strides[0];
  p.row_width = pixels.sizes[1];
  p.item_table = static_cast<const int64_t*>(item_table.data);
  p.num_items = item_table.sizes[0];
  p.num_tokens = keep.sizes[0];
  p.num_frames = num_frames;
  p.max_frame_tokens = max_frame_tokens;
  p.threshold = threshold;
  p.min_tokens = min_tokens;
  p.sum_lanes = sum_lanes;
  p.keep = static_cast<bool*>(keep.data);
  p.diff = write_diff ? static_cast<float*>(diff.data) : nullptr;
  if (p.num_items == 0 || p.num_tokens == 0) return;
#ifdef VL3FAST_WITH_CUDA
  if (device >= 0) return cuda::frame_keep_mask(p, device, stream);
#else
  (void)device;
  (void)stream;
#endif
  cpu::kernels().frame_keep_mask(p);
}

uint64_t keep_compaction_workspace_bytes(int64_t num_tokens, int device) {
#ifdef VL3FAST_WITH_CUDA
  if (device >= 0) return cuda::keep_compaction_workspace_bytes(num_tokens, device);
#else
  (void)num_tokens;
  (void)device;
#endif
  return 0;
}

void keep_compaction(const TensorRef& keep, const TensorRef& item_table, const TensorRef& token_index,
                     const TensorRef& token_cu, const TensorRef& patch_index, const TensorRef& patch_pos_hw,
                     const TensorRef& patch_cu, const TensorRef& num_kept, const TensorRef& workspace,
                     uintptr_t stream) {
  expect_ref(keep, "keep", DType::kBool, 1);
  check_prune_table(item_table);
  expect_ref(token_index, "token_index", DType::kInt64, 1);
  expect_ref(token_cu, "token_cu", DType::kInt32, 1);
  expect_ref(patch_index, "patch_index", DType::kInt64, 1);
  expect_ref(patch_pos_hw, "patch_pos_hw", DType::kInt32, 2);
  expect_ref(patch_cu, "patch_cu", DType::kInt32, 1);
  expect_ref(num_kept, "num_kept", DType::kInt64, 1);
  expect_ref(workspace, "workspace", DType::kUInt8, 1);
  for (const TensorRef* r : {&keep, &token_index, &token_cu, &patch_index, &patch_pos_hw, &patch_cu, &num_kept})
    expect(is_contiguous(*r), "keep_compaction: outputs must be contiguous");
  expect(token_index.sizes[0] == keep.sizes[0], "token_index: expected [M]");
  expect(patch_pos_hw.sizes[0] == patch_index.sizes[0] && patch_pos_hw.sizes[1] == 2, "patch_pos_hw: expected [P, 2]");
  expect(token_cu.sizes[0] >= 1 && patch_cu.sizes[0] == token_cu.sizes[0], "token_cu, patch_cu: expected [F + 1]");
  expect(num_kept.sizes[0] == 2, "num_kept: expected [2]");
  const int device = common_device(
      {&keep, &item_table, &token_index, &token_cu, &patch_index, &patch_pos_hw, &patch_cu, &num_kept, &workspace},
      "keep_compaction");
  KeepCompactParams p;
  p.keep = static_cast<const bool*>(keep.data);
  p.item_table = static_cast<const int64_t*>(item_table.data);
  p.num_items = item_table.sizes[0];
  p.num_tokens = keep.sizes[0];
  p.num_patches = patch_index.sizes[0];
  p.num_frames = token_cu.sizes[0] - 1;
  p.token_index = static_cast<int64_t*>(token_index.data);
  p.token_cu = static_cast<int32_t*>(token_cu.data);
  p.patch_index = static_cast<int64_t*>(patch_index.data);
  p.patch_pos_hw = static_cast<int32_t*>(patch_pos_hw.data);
  p.patch_cu = static_cast<int32_t*>(patch_cu.data);
  p.num_kept = static_cast<int64_t*>(num_kept.data);
  p.workspace = workspace.data;
  p.workspace_bytes = static_cast<uint64_t>(workspace.sizes[0]);
  expect(p.num_items > 0 || (p.num_tokens == 0 && p.num_frames == 0), "item_table: empty but tokens given");
#ifdef VL3FAST_WITH_CUDA
  if (device >= 0) {
    expect(p.workspace_bytes >= cuda::keep_compaction_workspace_bytes(p.num_tokens, device),
           "keep_compaction: workspace smaller than keep_compaction_workspace_bytes()");
    return cuda::keep_compaction(p, device, stream);
  }
#else
  (void)device;
  (void)stream;
#endif
  cpu::kernels().keep_compaction(p);
}

py::dict info() {
  py::dict d;
  d["version"] = VL3FAST_VERSION;
  d["cpu_isas_compiled"] = cpu::compiled_isas();
  d["cpu_isa"] = cpu::selected_isa();
#ifdef VL3FAST_WITH_CUDA
  d["cuda_compiled"] = true;
  d["cuda_archs"] = std::string(cuda::compiled_archs());
  d["cuda_runtime_version"] = cuda::runtime_version();
#else
  d["cuda_compiled"] = false;
  d["cuda_archs"] = std::string();
  d["cuda_runtime_version"] = 0;
#endif
  return d;
}

py::tuple cuda_device_count() {
#ifdef VL3FAST_WITH_CUDA
  std::string error;
  const int n = cuda::device_count(error);
  return py::make_tuple(n, error);
#else
  return py::make_tuple(-1, std::string("vl3fast was built without its CUDA backend"));
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "vl3fast compiled core: CPU and CUDA kernels over raw tensor views (no torch dependency)";

  py::class_<TensorRef>(m, "TensorRef")
      .def(py::init([](uintptr_t data, int dtype, const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides,
                       int device_index) {
             expect(sizes.size() == strides.size() && sizes.size() <= static_cast<size_t>(kMaxDims),
                    "TensorRef: sizes and strides must have equal length <= 4");
             expect(dtype >= 0 && dtype <= static_cast<int>(DType::kUInt8), "TensorRef: unknown dtype code");
             TensorRef r;
             r.data = reinterpret_cast<void*>(data);
             r.dtype = static_cast<DType>(dtype);
             r.ndim = static_cast<int32_t>(sizes.size());
             for (size_t i = 0; i < sizes.size(); ++i) {
               r.sizes[i] = sizes[i];
               r.strides[i] = strides[i];
             }
             r.device_index = device_index;
             return r;
           }),
           py::arg("data"), py::arg("dtype"), py::arg("sizes"), py::arg("strides"), py::arg("device_index"))
      .def_property_readonly("ndim", [](const TensorRef& r) { return r.ndim; })
      .def_property_readonly("device_index", [](const TensorRef& r) { return r.device_index; });

  m.def("info", &info, "Version, compiled CPU ISA levels and the one in use, CUDA archs.");
  m.def("cuda_device_count", &cuda_device_count, "(count, error): count is -1 when CUDA cannot be used.");
  m.def("rope2d_position_ids", &rope2d_position_ids, py::arg("item_table"), py::arg("pos_hw"), py::arg("cu_seqlens"),
        py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("apply_rope2d", &apply_rope2d, py::arg("x"), py::arg("pos_hw"), py::arg("inv_freq"), py::arg("out"),
        py::arg("inverse"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("rope2d_attention_workspace_bytes", &rope2d_attention_workspace_bytes, py::arg("num_tokens"),
        py::arg("num_segments"), py::arg("num_heads"), py::arg("head_dim"), py::arg("backward"),
        py::arg("device_index") = -1, py::arg("kernel") = "",
        "Bytes of uint8 workspace rope2d_attention_forward/backward need (CPU: with the current thread count).");
  m.def("attention_cuda_configs", &attention_cuda_configs,
        "The CUDA attention kernel's supported dtype codes and head dims (declared once in attention_tc.h).");
  m.def("_attn_tc_plan", &attn_tc_plan, py::arg("cu_seqlens"), py::arg("num_tokens"), py::arg("block"),
        py::arg("max_seqlen") = -1, "Test only: CUDA attention block table and work-item decoding, run on the CPU.");
  m.def("_attn_tc_layout", &attn_tc_layout, py::arg("num_tokens"), py::arg("num_segments"), py::arg("num_heads"),
        py::arg("head_dim"), py::arg("backward"), "Test only: CUDA attention workspace layout and tile sizes.");
  m.def("_attn_tc_fragments", &attn_tc_fragments, "Test only: per-lane MMA fragment coordinates of the CUDA kernels.");
  m.def("rope2d_attention_forward", &rope2d_attention_forward, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("cu_seqlens"), py::arg("pos_hw"), py::arg("inv_freq"), py::arg("out"), py::arg("lse"),
        py::arg("workspace"), py::arg("scale"), py::arg("max_seqlen") = -1, py::arg("stream") = 0,
        py::arg("kernel") = "", py::call_guard<py::gil_scoped_release>());
  m.def("rope2d_attention_backward", &rope2d_attention_backward, py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("cu_seqlens"), py::arg("pos_hw"), py::arg("inv_freq"), py::arg("out"), py::arg("lse"),
        py::arg("dout"), py::arg("dq"), py::arg("dk"), py::arg("dv"), py::arg("workspace"), py::arg("scale"),
        py::arg("max_seqlen") = -1, py::arg("stream") = 0, py::arg("kernel") = "",
        py::call_guard<py::gil_scoped_release>());
  m.def("_attn_tc_prepass", &attn_tc_prepass, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens"),
        py::arg("pos_hw"), py::arg("inv_freq"), py::arg("out"), py::arg("lse"), py::arg("dout"),
        py::arg("workspace"), py::arg("scale"), py::arg("max_seqlen"), py::arg("backward"), py::arg("stream") = 0,
        py::call_guard<py::gil_scoped_release>(),
        "Test only: the CUDA tensor-core kernel's pre-passes alone, outputs left in the workspace.");
  register_attention_test_bindings(m);
  m.def("frame_keep_mask", &frame_keep_mask, py::arg("pixels"), py::arg("item_table"), py::arg("keep"), py::arg("diff"),
        py::arg("num_frames"), py::arg("max_frame_tokens"), py::arg("threshold"), py::arg("min_tokens"), py::arg("sum_lanes"), py::arg("write_diff"),
        py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("keep_compaction_workspace_bytes", &keep_compaction_workspace_bytes, py::arg("num_tokens"),
        py::arg("device_index"), "Bytes of device workspace keep_compaction needs (0 on the CPU).");
  m.def("keep_compaction", &keep_compaction, py::arg("keep"), py::arg("item_table"), py::arg("token_index"),
        py::arg("token_cu"), py::arg("patch_index"), py::arg("patch_pos_hw"), py::arg("patch_cu"), py::arg("num_kept"),
        py::arg("workspace"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());
}
