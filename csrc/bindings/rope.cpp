// Position ids for 2D RoPE over a packed grid, and the standalone 2D RoPE (ops/positions.py, ops/rope2d.py).
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/common.h"
#include "cpu/isa.h"
#include "cpu/positions.h"
#include "vl3fast/params.h"
#include "vl3fast/positions.h"
#include "vl3fast/tensor_ref.h"
#ifdef VL3FAST_WITH_CUDA
#include "cuda/launchers.h"
#endif

namespace py = pybind11;

namespace vl3fast::bindings {
namespace {

void rope2d_position_ids(const TensorRef& item_table, const TensorRef& pos_hw, const TensorRef& cu_seqlens,
                         uintptr_t stream) {
  expect_ref(item_table, "item_table", DType::kInt64, 2);
  expect_ref(pos_hw, "pos_hw", DType::kInt32, 2);
  expect_ref(cu_seqlens, "cu_seqlens", DType::kInt32, 1);
  expect(item_table.sizes[1] == kGridFields && is_contiguous(item_table), "item_table: expected contiguous [N, 7]");
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
#else
  (void)stream;
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
  expect_head_dim(head_dim, "apply_rope2d");
  expect_rope_inputs(pos_hw, inv_freq, x.sizes[0], head_dim);
  const int device = common_device({&x, &pos_hw, &inv_freq, &out}, "apply_rope2d");
  Rope2dParams p;
  set_thd(x, p.x, p.x_stride_token, p.x_stride_head);
  set_thd(out, p.out, p.out_stride_token, p.out_stride_head);
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
#else
  (void)device;
  (void)stream;
#endif
  cpu::kernels().apply_rope2d(p);
}

py::dict head_dim_range() {
  py::dict d;
  d["min"] = kMinHeadDim;
  d["max"] = kMaxHeadDim;
  d["multiple"] = kHeadDimMultiple;
  return d;
}

}  // namespace

void bind_rope(py::module_& m) {
  m.def("head_dim_range", &head_dim_range,
        "The head dims every rope2d op supports (min, max, multiple), declared once in vl3fast/rope_math.h.");
  m.def("rope2d_position_ids", &rope2d_position_ids, py::arg("item_table"), py::arg("pos_hw"), py::arg("cu_seqlens"),
        py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("apply_rope2d", &apply_rope2d, py::arg("x"), py::arg("pos_hw"), py::arg("inv_freq"), py::arg("out"),
        py::arg("inverse"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());
}

}  // namespace vl3fast::bindings
