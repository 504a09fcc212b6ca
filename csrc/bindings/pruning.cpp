// Frame-difference token pruning: the keep mask and its sync-free compaction (ops/pruning.py).
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/common.h"
#include "cpu/isa.h"
#include "vl3fast/params.h"
#include "vl3fast/pruning.h"
#include "vl3fast/tensor_ref.h"
#ifdef VL3FAST_WITH_CUDA
#include "cuda/launchers.h"
#endif

namespace py = pybind11;

namespace vl3fast::bindings {
namespace {

void check_prune_table(const TensorRef& item_table) {
  expect_ref(item_table, "item_table", DType::kInt64, 2);
  expect(item_table.sizes[1] == kGridFields && is_contiguous(item_table), "item_table: expected contiguous [N, 7]");
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

}  // namespace

void bind_pruning(py::module_& m) {
  m.def("frame_keep_mask", &frame_keep_mask, py::arg("pixels"), py::arg("item_table"), py::arg("keep"), py::arg("diff"),
        py::arg("num_frames"), py::arg("max_frame_tokens"), py::arg("threshold"), py::arg("min_tokens"), py::arg("sum_lanes"), py::arg("write_diff"),
        py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());
  m.def("keep_compaction_workspace_bytes", &keep_compaction_workspace_bytes, py::arg("num_tokens"),
        py::arg("device_index"), "Bytes of device workspace keep_compaction needs (0 on the CPU).");
  m.def("keep_compaction", &keep_compaction, py::arg("keep"), py::arg("item_table"), py::arg("token_index"),
        py::arg("token_cu"), py::arg("patch_index"), py::arg("patch_pos_hw"), py::arg("patch_cu"), py::arg("num_kept"),
        py::arg("workspace"), py::arg("stream") = 0, py::call_guard<py::gil_scoped_release>());
}

}  // namespace vl3fast::bindings
