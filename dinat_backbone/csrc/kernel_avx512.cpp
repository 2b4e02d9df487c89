// AVX-512 build of the kernels (selected at run time when the CPU has AVX-512F/BW/DQ/VL). The
// code is na2d_kernel_impl.h and layer_norm_impl.h, shared by every unit; elsewhere than x86-64
// this unit compiles the same code for the baseline ISA and is never selected.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,f16c")
#endif
#define NA_ISA avx512
#define NA_VEC_BYTES 64
#include "na2d_kernel_impl.h"
#include "layer_norm_impl.h"
