// AVX2 + FMA build of the kernels (selected at run time when the CPU has AVX2 and FMA but no
// AVX-512). The code is na2d_kernel_impl.h and layer_norm_impl.h, shared by every unit; elsewhere
// than x86-64 this unit compiles the same code for the baseline ISA and is never selected.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#endif
#define NA_ISA avx2
#define NA_VEC_BYTES 32
#include "na2d_kernel_impl.h"
#include "layer_norm_impl.h"
