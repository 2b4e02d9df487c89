// Baseline build of the kernels (SSE2 on x86-64, NEON on aarch64): runs on any CPU, and the
// float64 path used for exact comparisons.
#define NA_ISA generic
#define NA_VEC_BYTES 16
#include "na2d_kernel_impl.h"

namespace dinat {
namespace generic {
static constexpr int kLanes = 4;  // widest query block

void forward_f32(const ForwardArgs& a, int64_t begin, int64_t end) {
  NA_DISPATCH_K(forward_rows, float, kLanes, a, begin, end)
}
void backward_query_f32(const BackwardQueryArgs& a, int64_t begin, int64_t end, double* drpb) {
  NA_DISPATCH_K(backward_query_rows, float, kLanes, a, begin, end, drpb)
}
void backward_key_f32(const BackwardKeyArgs& a, int64_t begin, int64_t end) { backward_key_rows<float, kLanes>(a, begin, end); }
void backward_key_gather_f32(const BackwardKeyArgs& a, int64_t begin, int64_t end) { backward_key_gather<float>(a, begin, end); }

// float64 is for accuracy checks, not speed: one instantiation with a run-time kernel size
void forward_f64(const ForwardArgs& a, int64_t begin, int64_t end) { forward_rows<double, 4, 0>(a, begin, end); }
void backward_query_f64(const BackwardQueryArgs& a, int64_t begin, int64_t end, double* drpb) {
  backward_query_rows<double, 4, 0>(a, begin, end, drpb);
}
void backward_key_f64(const BackwardKeyArgs& a, int64_t begin, int64_t end) { backward_key_rows<double, 4>(a, begin, end); }
void backward_key_gather_f64(const BackwardKeyArgs& a, int64_t begin, int64_t end) { backward_key_gather<double>(a, begin, end); }
}  // namespace generic
}  // namespace dinat
