// Plain-C++ interface between the torch-facing op (na2d.cpp) and the compute kernels.
//
// The kernels are compiled once per instruction set (kernel_avx512.cpp, kernel_avx2.cpp,
// kernel_generic.cpp) and picked at run time, so this header must not include torch or standard
// library headers with inline functions: an ISA translation unit would otherwise emit
// AVX-512 copies of shared inline functions that the linker could pick for generic callers.
#pragma once
#include <stdint.h>

namespace dinat {

// Largest kernel size the compiled kernel handles (stack arrays are sized by it); larger kernels
// take the pure-PyTorch path in ops.py.
constexpr int kMaxKernelSize = 31;

// Row length of the padded bias table and the drpb accumulators: a full-vector load at column
// offset (K - 1 + start - query) <= K - 1 may run up to K rounded up to the widest vector (16).
static inline int64_t bias_row_len(int64_t K) { return K - 1 + (K + 15) / 16 * 16; }

// A [batch, X, Y, heads, head_dim] tensor with head_dim contiguous; strides in elements.
struct Strided {
  void* ptr;
  int64_t sb, sx, sy, sh;
};

// Dilation turns the problem into dilation-1 problems on the d x d residue-class sub-grids
// (queries and keys with x = p*d + rx, y = s*d + ry). The per-axis tables are indexed
// [residue * sub_len + sub_index] in sub-grid units.
struct Geometry {
  int64_t B, X, Y, H, D, K, dil;
  int64_t Xs, Ys;          // longest sub-grid along each axis: ceil(X / d), ceil(Y / d)
  const int32_t* x_start;  // first key row of the window of query row p
  const int32_t* x_inv_lo; // first query row whose window contains key row p
  const int32_t* x_inv_hi; // last such query row
  const int32_t* y_start;
  const int32_t* y_inv_lo;
  const int32_t* y_inv_hi;
};

// Forward and backward pass 1 work in original coordinates, vectorised across queries: a block
// of L consecutive queries of one row whose windows sit at the same relative offsets (same m,
// the query's own position inside its window along y) shares every load pattern, so
// logits[a][t] (one vector over the L queries) += qt[c][y0:y0+L] * kt[row a][c][y0 + (t-m)*d : ...]
// with all lanes useful and the softmax elementwise across the K*K vectors.
struct LaneGeometry {
  const int32_t* x_first;  // original index of the first key row of query row x's window
  const int32_t* x_m;      // (x - x_first) / d: the window row of the query itself
  const int32_t* blocks;   // [n_blocks][4] = (y0, count, m, lanes): the query blocks of every row
  int64_t n_blocks;
  int64_t yp;              // row length of the transposed copies [B, H, X, D, yp]
};

// Backward pass 2 works per key on residue-class sub-grids; its tasks are rows of a sub-grid:
//   task = (((b * H + h) * d + rx) * d + ry) * Xs + p
// Tasks with p >= the residue class length are empty.

// Forward tasks are query rows: task = (b * H + h) * X + x.
struct ForwardArgs {
  Geometry g;
  LaneGeometry lg;
  const void* qt;     // transposed copies [B, H, X, D, yp] (+ 16 finite elements at the end)
  const void* kt;
  const void* vt;
  Strided out;
  const void* bias;   // [H, 2K-1, rp]: rpb with zero padding (all zeros when there is no rpb)
  int64_t rp;         // padded bias row length, >= K - 1 + (K rounded up to the vector width); see bias_row_len
  void* weights;      // softmax weights [B, H, X, K*K, Y] saved for backward, or nullptr
  double scale;
};

// Pass 1 of backward, per query: dP = dO . v, dS = P * (dP - sum P dP), dQ = scale * dS . k,
// drpb += dS. dS is stored for pass 2.
// Tasks as in forward (query rows).
struct BackwardQueryArgs {
  Geometry g;
  LaneGeometry lg;
  const void* got;      // transposed copies of grad_out, key, value
  const void* kt;
  const void* vt;
  Strided grad_q;
  const void* weights;  // P [B, H, X, K*K, Y]
  void* grad_logits;    // dS [B, H, X, K*K, Y] (output)
  int64_t rp;           // row length of the drpb accumulator [H, 2K-1, rp]
  double scale;
};

// Pass 2 of backward, per key, gathering over the inverse neighbourhood (no scatter, no races):
// dK = scale * sum dS * q, dV = sum P * dO.
struct BackwardKeyArgs {
  Geometry g;
  Strided q, grad_out, grad_k, grad_v;
  const void* weights;      // P [B, H, X, K*K, Y]
  const void* grad_logits;  // dS
  double scale;
};

#define DINAT_DECLARE_ISA(isa)                                                                           \
  namespace isa {                                                                                        \
  void forward_f32(const ForwardArgs& a, int64_t task_begin, int64_t task_end);                          \
  void backward_query_f32(const BackwardQueryArgs& a, int64_t task_begin, int64_t task_end, double* drpb); \
  void backward_key_f32(const BackwardKeyArgs& a, int64_t task_begin, int64_t task_end);                 \
  }

DINAT_DECLARE_ISA(avx512)
DINAT_DECLARE_ISA(avx2)
DINAT_DECLARE_ISA(generic)

namespace generic {
void forward_f64(const ForwardArgs& a, int64_t task_begin, int64_t task_end);
void backward_query_f64(const BackwardQueryArgs& a, int64_t task_begin, int64_t task_end, double* drpb);
void backward_key_f64(const BackwardKeyArgs& a, int64_t task_begin, int64_t task_end);
}  // namespace generic

}  // namespace dinat
