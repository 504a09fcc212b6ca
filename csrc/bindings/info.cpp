// vl3fast._C.info() and cuda_device_count(): what this binary was built with and what it can use.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bindings/common.h"
#include "cpu/isa.h"
#ifdef VL3FAST_WITH_CUDA
#include "cuda/launchers.h"
#endif

#ifndef VL3FAST_VERSION
#define VL3FAST_VERSION "0+unknown"
#endif

namespace py = pybind11;

namespace vl3fast::bindings {
namespace {

py::dict info() {
  py::dict d;
  d["version"] = VL3FAST_VERSION;
  d["cpu_isas_compiled"] = cpu::compiled_isas();
  d["cpu_isa"] = cpu::selected_isa();
  d["cpu_attention_bf16"] = std::string(cpu::attention_bf16_products());
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

void bind_info(py::module_& m) {
  m.def("info", &info, "Version, compiled CPU ISA levels and the one in use, CUDA archs.");
  m.def("cuda_device_count", &cuda_device_count, "(count, error): count is -1 when CUDA cannot be used.");
}

}  // namespace vl3fast::bindings
