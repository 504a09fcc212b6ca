// Packed rope2d attention, forward and backward (ops/attention.py): checks, params, workspace size,
// the supported CUDA matrix, and one dispatch helper shared by both directions.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include <omp.h>

#include "bindings/common.h"
#include "cpu/attention_tiles.h"
#include "cpu/isa.h"
#include "vl3fast/attention_simple.h"
#include "vl3fast/attention_tc.h"
#include "vl3fast/params.h"
#include "vl3fast/tensor_ref.h"
#ifdef VL3FAST_WITH_CUDA
#include "cuda/launchers.h"
#endif

namespace py = pybind11;

namespace vl3fast::bindings {
namespace {

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
// The tensor-core kernel reads v and dout with 16-byte vector copies.
void expect_vector_aligned(const TensorRef& t, const char* name) {
  expect(reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.strides[0] % 8 == 0 && t.strides[1] % 8 == 0,
         std::string("rope2d_attention (CUDA): ") + name +
             " must be 16-byte aligned with token and head strides multiples of 8 elements");
}
#endif

// The supported CUDA matrix (vl3fast/attention_tc.h), for the ops' validation and the tests' parametrization.
// The CPU kernel's compile-time fast-path head dims (declared once in cpu/attention_tiles.h).
py::dict attention_cpu_configs() {
  py::list fast;
#define VL3FAST_HD_ITEM(DIM) fast.append(DIM);
  VL3FAST_CPU_ATTN_FAST_HEAD_DIMS(VL3FAST_HD_ITEM)
#undef VL3FAST_HD_ITEM
  py::dict d;
  d["fast_head_dims"] = fast;
  return d;
}

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
  expect_head_dim(head_dim, "rope2d_attention");
  expect_ref(cu_seqlens, "cu_seqlens", DType::kInt32, 1);
  expect(is_contiguous(cu_seqlens) && cu_seqlens.sizes[0] >= 1, "cu_seqlens: expected contiguous [S + 1]");
  expect_rope_inputs(pos_hw, inv_freq, q.sizes[0], head_dim);
  expect_ref(lse, "lse", DType::kFloat32, 2);
  expect(lse.sizes[0] == q.sizes[1] && lse.sizes[1] == q.sizes[0] && is_contiguous(lse), "lse: expected contiguous [H, T]");
  expect_ref(workspace, "workspace", DType::kUInt8, 1);
  expect(std::isfinite(scale) && scale > 0, "rope2d_attention: scale must be finite and positive");
  AttentionParams p;
  set_thd(q, p.q, p.q_stride_token, p.q_stride_head);
  set_thd(k, p.k, p.k_stride_token, p.k_stride_head);
  set_thd(v, p.v, p.v_stride_token, p.v_stride_head);
  set_thd(out, p.out, p.out_stride_token, p.out_stride_head);
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

// The one check of the cu_seqlens values (and of the max_seqlen hint against them) for host tensors: the CPU
// kernel trusts them, and ops/attention.py leaves them to this check (on CUDA the block-table scan checks them
// on the device instead, without a sync).
void expect_cu_seqlens_values(const AttentionParams& p, int64_t max_seqlen) {
  const int32_t* cu = p.cu_seqlens;
  if (cu[0] != 0) throw std::invalid_argument("cu_seqlens: must start at 0, got " + std::to_string(cu[0]));
  int64_t longest = 0;
  for (int64_t s = 0; s < p.num_segments; ++s) {  // messages built only on failure: this runs every layer
    if (cu[s + 1] < cu[s])
      throw std::invalid_argument("cu_seqlens: must be non-decreasing, got " + std::to_string(cu[s]) + " then " +
                                  std::to_string(cu[s + 1]) + " at index " + std::to_string(s));
    longest = std::max<int64_t>(longest, cu[s + 1] - cu[s]);
  }
  if (cu[p.num_segments] != p.num_tokens)
    throw std::invalid_argument("cu_seqlens: last value must equal the number of tokens T = " +
                                std::to_string(p.num_tokens) + ", got " + std::to_string(cu[p.num_segments]));
  if (max_seqlen >= 0 && longest > max_seqlen)
    throw std::invalid_argument("max_seqlen: " + std::to_string(max_seqlen) + " is shorter than the longest segment (" +
                                std::to_string(longest) + ")");
}

// Runs one direction of attention with the named kernel on the device its tensors live on.  On CUDA
// cu_seqlens stays on the device (not read here: no sync; checked by the kernels' scan, which clamps it)
// and for the tensor-core kernel v (and dout) must suit 16-byte vector copies; on the CPU its values are
// validated first because the kernel trusts them.  `dout` is null for forward.
void run_attention(const AttentionParams& p, bool backward, const TensorRef& v, const TensorRef* dout,
                   int64_t max_seqlen, int device, uintptr_t stream, AttnKernel kernel) {
#ifdef VL3FAST_WITH_CUDA
  if (device >= 0) {
    expect(p.num_heads <= 65535, std::string(backward ? "rope2d_attention_backward" : "rope2d_attention") +
                                     " (CUDA): at most 65535 heads");
    if (kernel == AttnKernel::kCudaTensorCore) {
      expect_vector_aligned(v, "v");
      if (dout != nullptr) expect_vector_aligned(*dout, "dout");
    }
    if (p.num_tokens == 0 || p.num_heads == 0) return;
    const auto which =
        kernel == AttnKernel::kCudaSimple ? cuda::AttentionKernel::kSimple : cuda::AttentionKernel::kTensorCore;
    if (backward) return cuda::rope2d_attention_backward(p, max_seqlen, which, device, stream);
    return cuda::rope2d_attention_forward(p, max_seqlen, which, device, stream);
  }
#else
  (void)v;
  (void)dout;
  (void)device;
  (void)stream;
#endif
  (void)kernel;
  expect_cu_seqlens_values(p, max_seqlen);
  if (p.num_tokens == 0 || p.num_heads == 0) return;
  if (backward) return cpu::kernels().rope2d_attention_backward(p);
  cpu::kernels().rope2d_attention_forward(p);
}

void rope2d_attention_forward(const TensorRef& q, const TensorRef& k, const TensorRef& v, const TensorRef& cu_seqlens,
                              const TensorRef& pos_hw, const TensorRef& inv_freq, const TensorRef& out,
                              const TensorRef& lse, const TensorRef& workspace, double scale, int64_t max_seqlen,
                              uintptr_t stream, const std::string& kernel) {
  const int device = common_device({&q, &k, &v, &cu_seqlens, &pos_hw, &inv_freq, &out, &lse}, "rope2d_attention");
  const AttnKernel which = attention_kernel(kernel, device);
  const AttentionParams p =
      attention_params(q, k, v, cu_seqlens, pos_hw, inv_freq, out, lse, workspace, scale, false, device, kernel);
  run_attention(p, false, v, nullptr, max_seqlen, device, stream, which);
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
  set_thd(dout, p.dout, p.dout_stride_token, p.dout_stride_head);
  set_thd(dq, p.dq, p.dq_stride_token, p.dq_stride_head);
  set_thd(dk, p.dk, p.dk_stride_token, p.dk_stride_head);
  set_thd(dv, p.dv, p.dv_stride_token, p.dv_stride_head);
  run_attention(p, true, v, &dout, max_seqlen, device, stream, which);
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
  set_thd(dout, p.dout, p.dout_stride_token, p.dout_stride_head);
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

}  // namespace

void bind_attention(py::module_& m) {
  m.def("rope2d_attention_workspace_bytes", &rope2d_attention_workspace_bytes, py::arg("num_tokens"),
        py::arg("num_segments"), py::arg("num_heads"), py::arg("head_dim"), py::arg("backward"),
        py::arg("device_index") = -1, py::arg("kernel") = "",
        "Bytes of uint8 workspace rope2d_attention_forward/backward need (CPU: with the current thread count).");
  m.def("attention_cpu_configs", &attention_cpu_configs,
        "The CPU attention kernel's fast-path head dims (declared once in cpu/attention_tiles.h).");
  m.def("attention_cuda_configs", &attention_cuda_configs,
        "The CUDA attention kernel's supported dtype codes and head dims (declared once in attention_tc.h).");
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
}

}  // namespace vl3fast::bindings
