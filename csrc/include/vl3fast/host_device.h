// Lets index arithmetic be shared by CPU kernels and CUDA kernels, so that CPU tests exercise the
// exact code a GPU runs (GPU time is scarce; fragment-level code is all that should need one).
#pragma once
//
// `static` gives each translation unit its own copy: the CPU kernels are compiled once per ISA level,
// and a shared (COMDAT) copy of an AVX-512 build could otherwise be picked for the baseline build.
#if defined(__CUDACC__)
#define VL3FAST_HD static __host__ __device__ __forceinline__
#else
#define VL3FAST_HD static inline
#endif
