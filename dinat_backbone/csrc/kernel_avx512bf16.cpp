// AVX-512 build with AVX512_BF16 (selected at run time on CPUs that have it): the AVX-512 kernels
// plus bfloat16 products (vdpbf16ps) for bfloat16 tensors. The code is na2d_kernel_impl.h and
// layer_norm_impl.h, shared by every unit; elsewhere than x86-64 this unit compiles the baseline
// code and is never selected.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx512bf16,avx2,fma,bmi,bmi2,f16c")
#define NA_BF16_DOT 1
#endif
#define NA_ISA avx512bf16
#define NA_BF16_ENTRY 1
#define NA_VEC_BYTES 64
#include "na2d_kernel_impl.h"
#include "layer_norm_impl.h"
