// Element types crossing the Python/C++ boundary, and the one dispatch switch over them.
// The codes are part of the binary interface with vl3fast/ops/_bridge.py (DTYPE_CODES).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace vl3fast {

enum class DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kInt32 = 3, kInt64 = 4, kBool = 5, kUInt8 = 6 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kBool: return "bool";
    case DType::kUInt8: return "uint8";
  }
  return "unknown";
}

}  // namespace vl3fast

// Expands BODY once per floating dtype with `scalar_t` bound to the storage type chosen by the
// backend (FLOAT_T, BF16_T, HALF_T).  Any other dtype throws: every switch has an erroring default.
#define VL3FAST_DISPATCH_FLOATING(DTYPE, FLOAT_T, BF16_T, HALF_T, NAME, ...)                        \
  [&] {                                                                                            \
    switch (DTYPE) {                                                                               \
      case ::vl3fast::DType::kFloat32: { using scalar_t = FLOAT_T; return __VA_ARGS__(); }          \
      case ::vl3fast::DType::kBFloat16: { using scalar_t = BF16_T; return __VA_ARGS__(); }          \
      case ::vl3fast::DType::kFloat16: { using scalar_t = HALF_T; return __VA_ARGS__(); }           \
      default:                                                                                     \
        throw std::invalid_argument(std::string(NAME) + ": unsupported dtype " +                   \
                                    ::vl3fast::dtype_name(DTYPE) +                                 \
                                    " (supported: float32, bfloat16, float16)");                   \
    }                                                                                              \
  }()
