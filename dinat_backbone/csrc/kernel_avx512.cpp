// AVX-512 build of the kernels (selected at run time when the CPU has AVX-512F/BW/DQ/VL).
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,f16c")
#define NA_ISA avx512
#define NA_VEC_BYTES 64
#include "na2d_kernel_impl.h"

namespace dinat {
namespace avx512 {
// widest query block (lanes of one vector); blocks of LMAX/2 and LMAX/4 cover short runs
static constexpr int kLanes = 16;

void forward_f32(const ForwardArgs& a, int64_t begin, int64_t end) {
  NA_DISPATCH_K(forward_rows, float, kLanes, a, begin, end)
}
void backward_query_f32(const BackwardQueryArgs& a, int64_t begin, int64_t end, double* drpb) {
  NA_DISPATCH_K(backward_query_rows, float, kLanes, a, begin, end, drpb)
}
void backward_key_f32(const BackwardKeyArgs& a, int64_t begin, int64_t end) { backward_key_rows<float, kLanes>(a, begin, end); }
void backward_key_gather_f32(const BackwardKeyArgs& a, int64_t begin, int64_t end) { backward_key_gather<float>(a, begin, end); }
}  // namespace avx512
}  // namespace dinat

#else  // not x86-64: never selected, forward to the generic build
#include "na2d_kernel.h"
namespace dinat {
namespace avx512 {
void forward_f32(const ForwardArgs& a, int64_t b, int64_t e) { generic::forward_f32(a, b, e); }
void backward_query_f32(const BackwardQueryArgs& a, int64_t b, int64_t e, double* r) { generic::backward_query_f32(a, b, e, r); }
void backward_key_f32(const BackwardKeyArgs& a, int64_t b, int64_t e) { generic::backward_key_f32(a, b, e); }
void backward_key_gather_f32(const BackwardKeyArgs& a, int64_t b, int64_t e) { generic::backward_key_gather_f32(a, b, e); }
}  // namespace avx512
}  // namespace dinat
#endif
