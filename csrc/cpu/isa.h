// Runtime ISA dispatch for the CPU kernels.
//
// Every file in csrc/cpu/kernels/ is compiled once per ISA level (CMakeLists.txt: VL3FAST_CPU_ISAS),
// each time into its own namespace, so one binary carries a baseline x86-64 build, an AVX2+FMA build
// an AVX-512 build and an AVX-512 + AVX512-BF16 build (whose attention forward for bf16 uses bf16 dot
// products, kernels/attention_bf16.cpp) of the same source.  The best level the CPU supports is chosen
// once at first use; VL3FAST_CPU_ISA=generic|avx2|avx512|avx512bf16 forces a lower one (tests run every
// level this way).
#pragma once
#include <string>
#include <vector>

#include "vl3fast/params.h"

namespace vl3fast::cpu {

struct KernelTable {
  void (*apply_rope2d)(const Rope2dParams&);
  void (*frame_keep_mask)(const FrameKeepParams&);
  void (*keep_compaction)(const KeepCompactParams&);
  void (*rope2d_attention_forward)(const AttentionParams&);
  void (*rope2d_attention_backward)(const AttentionParams&);
};

// Names of the ISA levels compiled into this binary, lowest first.
std::vector<std::string> compiled_isas();
// The level in use (detected, or forced by VL3FAST_CPU_ISA); throws if a forced level is unusable.
const std::string& selected_isa();
// How the selected level's attention kernel multiplies bf16 tiles (shown by `vl3fast info`).
const char* attention_bf16_products();
const KernelTable& kernels();

}  // namespace vl3fast::cpu

// Each ISA build of csrc/cpu/kernels/ defines vl3fast::cpu::<isa>::kernel_table().
#define VL3FAST_DECLARE_ISA(NS) \
  namespace vl3fast::cpu::NS {  \
  const KernelTable& kernel_table(); \
  }
VL3FAST_DECLARE_ISA(generic)
#if defined(VL3FAST_HAVE_ISA_AVX2)
VL3FAST_DECLARE_ISA(avx2)
#endif
#if defined(VL3FAST_HAVE_ISA_AVX512)
VL3FAST_DECLARE_ISA(avx512)
#endif
#if defined(VL3FAST_HAVE_ISA_AVX512BF16)
VL3FAST_DECLARE_ISA(avx512bf16)
#endif
#undef VL3FAST_DECLARE_ISA
