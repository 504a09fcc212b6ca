// Keeps vl3fast._C loadable on glibc 2.28 (manylinux_2_28) when it is built on a newer distribution.
//
// libstdc++'s headers from GCC >= 11 read glibc's `__libc_single_threaded` (added in glibc 2.32) to skip
// atomic reference counting in single-threaded programs.  Defining the variable here, hidden, binds those
// reads to this copy instead of to glibc's: the value 0 means "maybe multi-threaded", so the atomic path is
// always taken, which is correct everywhere (the module runs OpenMP threads anyway).  Only linked when
// VL3FAST_PORTABLE_LINK is on (CMakeLists.txt); tests/build/test_elf.py checks the resulting symbol versions.
extern "C" __attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
