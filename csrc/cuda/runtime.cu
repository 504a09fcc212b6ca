// Device discovery.  cudart is linked statically and loads libcuda lazily, so these calls work (and
// report the reason) on a machine with no GPU or no driver.
#include "check.cuh"
#include "launchers.h"

#ifndef VL3FAST_CUDA_ARCHS
#define VL3FAST_CUDA_ARCHS "unknown"
#endif

namespace vl3fast::cuda {

int device_count(std::string& error) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    error = cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return -1;
  }
  return count;
}

int runtime_version() {
  int version = 0;
  cudaRuntimeGetVersion(&version);
  return version;
}

const char* compiled_archs() { return VL3FAST_CUDA_ARCHS; }

}  // namespace vl3fast::cuda
