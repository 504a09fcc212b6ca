// The module table of vl3fast._C: the TensorRef type and one bind_<family>() per op family.
// Plain functions over TensorRefs; no torch (DESIGN.md §3).  The GIL is released while kernels run.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <vector>

#include "bindings/common.h"
#include "vl3fast/tensor_ref.h"

namespace py = pybind11;
using namespace vl3fast;

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

  bindings::bind_info(m);
  bindings::bind_rope(m);
  bindings::bind_attention(m);
  bindings::bind_pruning(m);
  bindings::bind_testing(m);
}
