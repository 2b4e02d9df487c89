// Baseline build of the kernels (SSE2 on x86-64, NEON on aarch64): runs on any CPU, and the
// float64 path used for exact comparisons. The code is na2d_kernel_impl.h and layer_norm_impl.h,
// shared by every unit.
#define NA_ISA generic
#define NA_VEC_BYTES 16
#define NA_WITH_F64 1
#include "na2d_kernel_impl.h"
#include "layer_norm_impl.h"
