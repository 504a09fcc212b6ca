#include "isa.h"

#include <cstdlib>
#include <stdexcept>

namespace vl3fast::cpu {
namespace {

struct IsaEntry {
  const char* name;
  bool (*supported)();
  const KernelTable& (*table)();
  const char* attention_bf16;  // how the CPU attention multiplies bf16 tiles at this level
};

constexpr const char* kBf16AsFp32 = "fp32 FMA (bf16 converted to fp32)";

bool always() { return true; }
#if defined(VL3FAST_HAVE_ISA_AVX2)
bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"); }
#endif
#if defined(VL3FAST_HAVE_ISA_AVX512)
bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif
#if defined(VL3FAST_HAVE_ISA_AVX512BF16)
bool has_avx512bf16() { return has_avx512() && __builtin_cpu_supports("avx512bf16"); }
#endif

// Lowest first; the last supported entry wins.
const std::vector<IsaEntry>& entries() {
  static const std::vector<IsaEntry> list = {
      {"generic", &always, &generic::kernel_table, kBf16AsFp32},
#if defined(VL3FAST_HAVE_ISA_AVX2)
      {"avx2", &has_avx2, &avx2::kernel_table, kBf16AsFp32},
#endif
#if defined(VL3FAST_HAVE_ISA_AVX512)
      {"avx512", &has_avx512, &avx512::kernel_table, kBf16AsFp32},
#endif
#if defined(VL3FAST_HAVE_ISA_AVX512BF16)
      {"avx512bf16", &has_avx512bf16, &avx512bf16::kernel_table,
       "vdpbf16ps (AVX512-BF16 dot products, fp32 accumulation; forward and backward)"},
#endif
  };
  return list;
}

const IsaEntry& choose() {
  const auto& list = entries();
  const char* forced = std::getenv("VL3FAST_CPU_ISA");
  if (forced != nullptr && *forced != '\0') {
    for (const auto& e : list) {
      if (std::string(e.name) == forced) {
        if (!e.supported()) throw std::runtime_error(std::string("VL3FAST_CPU_ISA=") + forced + ": this CPU lacks it");
        return e;
      }
    }
    std::string names;
    for (const auto& e : list) names += std::string(names.empty() ? "" : ", ") + e.name;
    throw std::runtime_error(std::string("VL3FAST_CPU_ISA=") + forced + " is not compiled in (available: " + names + ")");
  }
  const IsaEntry* best = &list.front();
  for (const auto& e : list)
    if (e.supported()) best = &e;
  return *best;
}

const IsaEntry& chosen() {
  static const IsaEntry& entry = choose();
  return entry;
}

}  // namespace

std::vector<std::string> compiled_isas() {
  std::vector<std::string> names;
  for (const auto& e : entries()) names.emplace_back(e.name);
  return names;
}

const std::string& selected_isa() {
  static const std::string name = chosen().name;
  return name;
}

const char* attention_bf16_products() { return chosen().attention_bf16; }

const KernelTable& kernels() { return chosen().table(); }

}  // namespace vl3fast::cpu
