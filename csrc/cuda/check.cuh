// Turns CUDA runtime errors into C++ exceptions (pybind11 maps them to RuntimeError), and the checked mode.
//
// Checked mode, VL3FAST_CUDA_DEBUG=1 (read at every launch, so a test or the smoke step can switch it):
// every launch is followed by a stream sync and an error check that names the kernel, so the first fault
// is pinned to its kernel instead of surfacing as a sticky error at some later call; the attention
// launchers also NaN-fill their outputs and workspace first and raise ValueError on the device-side input
// checks (csrc/cuda/attention.cu).  Outside checked mode nothing syncs with the host.
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace vl3fast::cuda {

inline void check_cuda(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess)
    throw std::runtime_error("vl3fast CUDA error in " + what + ": " + cudaGetErrorString(status));
}

inline bool debug_mode() {
  const char* v = std::getenv("VL3FAST_CUDA_DEBUG");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

// After every kernel launch: the launch error always; in checked mode also the kernel's own execution.
inline void check_launch(const std::string& kernel, cudaStream_t stream) {
  check_cuda(cudaGetLastError(), "launch of " + kernel);
  if (debug_mode())
    check_cuda(cudaStreamSynchronize(stream), kernel + " (VL3FAST_CUDA_DEBUG: synchronised after the launch)");
}

// Selects `device` for the launch and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

inline unsigned grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 32 ? (blocks > 0 ? blocks : 1) : 65535 * 32);
}

}  // namespace vl3fast::cuda
