// Plain-C++ interface between the torch-facing op (na2d.cpp) and the compute kernels.
//
// The kernels (one source, na2d_kernel_impl.h) are compiled once per instruction set by the units
// kernel_avx512bf16.cpp, kernel_avx512.cpp, kernel_avx2.cpp, kernel_generic.cpp and picked at run time, so this header must not include torch or standard
// library headers with inline functions: an ISA translation unit would otherwise emit
// AVX-512 copies of shared inline functions that the linker could pick for generic callers.
#pragma once
#include <stdint.h>

namespace dinat {

// Largest kernel size the compiled kernel handles (stack arrays are sized by it); exposed to Python
// as _C.max_kernel_size(), where the op's backend table sends larger kernels elsewhere.
constexpr int kMaxKernelSize = 31;

// Storage types of the tensors the kernels read and write (Strided::elem). The float32 kernels
// also read and write bfloat16 tensors, converting on load and store (float32 compute); the
// float64 kernels take float64 only. The saved weights (ForwardArgs::weights) and dS
// (grad_logits) are stored like q, k, v: bfloat16 for bfloat16 tensors, else the compute type.
constexpr int32_t kElemF32 = 0, kElemF64 = 1, kElemBF16 = 2;

// A [batch, X, Y, heads, head_dim] tensor with head_dim contiguous; strides in elements.
struct Strided {
  void* ptr;
  int64_t sb, sx, sy, sh;
  int32_t elem;  // kElem*
};

// Dilation turns the problem into dilation-1 problems on the d x d residue-class sub-grids
// (queries and keys with x = p*d + rx, y = s*d + ry). The per-axis tables are indexed
// [residue * sub_len + sub_index] in sub-grid units.
//
// Columns are taken in chunk order (y_of_pos[pos] is the column at position pos; the identity for
// d = 1): the residue classes are cut into chunks of c consecutive classes (c = 16 / H rounded up,
// or all d classes if fewer; a remainder smaller than c joins the last chunk), and a chunk lists its columns sub-grid position by
// position, its c classes side by side (class r at sub-grid position s: column s*d + r). The
// neighbour of a column along its class is then step = c*H lanes further in every per-row lane
// layout of the kernels (transposed rows, blocks, the saved weights and dS), a step of about one
// vector for any dilation: a run of equal window offsets spans c*H lanes (full vectors), and the K
// window columns of a vector lie in adjacent cache lines. (In column order they lay d*H lanes apart
// and the dilated dK / dV pass missed L1; in class order, c = 1, the runs of small heads were a few
// lanes long.) A block never spans two chunks and carries its chunk's step.
struct Geometry {
  int64_t B, X, Y, H, D, K, dil;
  int64_t Xs, Ys;          // longest sub-grid along each axis: ceil(X / d), ceil(Y / d)
  const int32_t* x_start;  // first key row of the window of query row p
  const int32_t* x_inv_lo; // first query row whose window contains key row p
  const int32_t* x_inv_hi; // last such query row
  const int32_t* y_start;
  const int32_t* y_inv_lo;
  const int32_t* y_inv_hi;
  const int32_t* y_of_pos;  // [Y]: column of chunk-order position pos
  const int32_t* pos_of_y;  // [Y]: its inverse
};

// ints per block of LaneGeometry::blocks and BackwardKeyArgs::key_blocks
constexpr int kBlockInts = 5;

// Forward and backward pass 1 work on original rows, vectorised across queries AND heads: rows are
// transposed to [D, yp] with lane j = pos * H + h (columns in chunk order, see Geometry and
// PackArgs), so every head of a run of consecutive positions of one chunk whose windows sit at the
// same relative offsets (same m, the query's own position inside its window along y) shares every
// load pattern:
//   logits[a][t] (one vector over L lanes) += qt[c][j0:j0+L] * kt[row a][c][j0 + (t-m)*step : ...]
// with all lanes useful, and the softmax elementwise across the K*K vectors. The head of lane l of
// a vector starting at lane j0 is (j0 + l) % H, so the bias comes from a table of 16-lane vectors
// per phase j0 % H.
//
// A task is a group of up to kRowGroup query rows x0, x0 + d, ... of one residue class: their
// windows share most key rows, and every key vector loaded for one row of the group serves all
// rows whose window holds that key row, which halves the (mostly cache-line-splitting) key loads
// per multiply-add of single-row tasks.
constexpr int kRowGroup = 2;

struct LaneGeometry {
  const int32_t* x_first;  // original index of the first key row of query row x's window
  const int32_t* x_m;      // (x - x_first) / d: the window row of the query itself
  const int32_t* blocks;   // [n_blocks][kBlockInts] = (j0, count, m, lanes, step): the vectors of every row
  int64_t n_blocks;
  int64_t yp;              // row length of the transposed rows [D, yp], >= Y * H
  const int32_t* groups;   // [n_groups][2] = (x0, rows): row groups, residue class by class
  int64_t n_groups;
};

// A tensor whose rows the kernels transpose (see RowCache in na2d_kernel_impl.h): row
// task = b * X + x becomes row[c * yp + pos * H + h] = src[b, x, y_of_pos[pos], h, c], zero past Y * H.
struct PackArgs {
  Strided src;
  int64_t X, Y, H, D, yp;
  const int32_t* y_of_pos;  // Geometry::y_of_pos
  const int32_t* chunks;    // [n_chunks][3] = (first lane, end lane, step) of each chunk (see Geometry)
  int64_t n_chunks;
};

// The tasks one worker of an op call runs (forward, backward pass 1 and pass 2): its own share of
// the tasks front to back, then, once that is done, single tasks from the back end of whichever
// share has the most left (work stealing). A static split made every pass wait for its slowest
// thread: on a 2-core host the threads' times for equal shares differed by ~12 % (cache and
// neighbour noise), and a descheduled thread stalled the op. Tasks write disjoint outputs, so who
// runs a task changes nothing but the order of the per-thread drpb sums. shares[w] =
// (next << 32) | end of worker w, changed only by compare-and-swap (take_task below).
struct TaskSource {
  uint64_t* shares;
  int32_t n_workers;
  int32_t worker;
};

// The next task of this worker: the front of its own share, else the back of the
// share with the most tasks left, else -1 (all taken). Relaxed atomics: each task index leaves its
// share through exactly one successful compare-and-swap of that share's word; the outputs the tasks
// write are published by the join at the end of the parallel region. static: every translation unit
// (each instruction set's, na2d.cpp) has its own copy, compiled for its own target.
static inline int64_t take_task(TaskSource& src) {
  uint64_t* own = src.shares + src.worker;
  uint64_t v = __atomic_load_n(own, __ATOMIC_RELAXED);
  for (;;) {
    const uint64_t next = v >> 32, end = v & 0xffffffffu;
    if (next >= end) break;
    if (__atomic_compare_exchange_n(own, &v, ((next + 1) << 32) | end, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
      return static_cast<int64_t>(next);
  }
  for (;;) {
    int best = -1;
    uint64_t most = 0;
    for (int w = 0; w < src.n_workers; ++w) {
      const uint64_t u = __atomic_load_n(src.shares + w, __ATOMIC_RELAXED);
      const uint64_t next = u >> 32, end = u & 0xffffffffu;
      if (end > next && end - next > most) {
        most = end - next;
        best = w;
      }
    }
    if (best < 0) return -1;
    uint64_t* victim = src.shares + best;
    uint64_t u = __atomic_load_n(victim, __ATOMIC_RELAXED);
    for (;;) {
      const uint64_t next = u >> 32, end = u & 0xffffffffu;
      if (next >= end) break;  // emptied meanwhile: look again
      if (__atomic_compare_exchange_n(victim, &u, (next << 32) | (end - 1), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        return static_cast<int64_t>(end - 1);
    }
  }
}

// Lane width of the bias table rows and drpb accumulators (the widest vector).
constexpr int kBiasLanes = 16;

// Forward tasks are row groups: task = b * n_groups + group (all heads).
struct ForwardArgs {
  Geometry g;
  LaneGeometry lg;
  PackArgs q, k, v;   // transposed row by row inside the kernel
  Strided out;
  const void* bias;   // [H phases, 2K-1, 2K-1, 16]: lane l of phase p = rpb[(p + l) % H] (zeros without rpb)
  void* weights;      // softmax weights [B, X, K*K, Y*H lanes in chunk order] saved for backward, or nullptr
  double scale;
};

// Pass 1 of backward, per query: dP = dO . v, dS = P * (dP - sum P dP), dQ = scale * dS . k,
// drpb += dS. dS is stored for pass 2.
// Tasks as in forward (row groups).
struct BackwardQueryArgs {
  Geometry g;
  LaneGeometry lg;
  PackArgs grad_out, k, v;  // transposed row by row inside the kernel
  Strided grad_q;
  const void* weights;  // P [B, X, K*K, Y*H lanes in chunk order]
  void* grad_logits;    // dS, same layout (output)
  int64_t rp;           // row length of the drpb accumulator [H, 2K-1, rp]
  double scale;
};

// Pass 2 of backward, per key, gathering over the inverse neighbourhood (no scatter, no races):
// dK = scale * sum dS * q, dV = sum P * dO. Row path (backward_key_*; the gather backward_key_gather_*
// for dilated maps with chunks narrower than a vector, see na2d.cpp): tasks are key rows, residue
// class by class (task = (b * d + rx) * Xs + p for key row x = p * d + rx, all heads),
// vectorised across keys and heads like the query side: lane j = pos * H + h of a key row (chunk
// order), cut into vectors ("key blocks") of keys with the same inverse-neighbourhood pattern along
// y: the queries at sub-grid offsets s = s_lo..s_hi holding the key at window column t(s). For such
// a vector the query of lane l for offset s sits at lane j0 + s*step + l of a query row, so P, dS
// (saved as [.., K*K, lanes]) and the transposed dO, q rows are plain vector loads:
//   dV_t[c][lanes] += P[x][a*K + t(s)][j0 + s*step + lanes] * dO_t[x][c][j0 + s*step + lanes]
// over the query rows x whose window holds the key row (window row a) and the pattern's (s, t).
struct BackwardKeyArgs {
  Geometry g;
  Strided grad_k, grad_v;
  PackArgs q, grad_out;     // transposed row by row inside the kernel
  const void* weights;      // P [B, X, K*K, Y*H lanes in chunk order] (+ 16 readable elements after the end)
  const void* grad_logits;  // dS, same layout
  const int32_t* key_blocks;  // [n_key_blocks][kBlockInts] = (j0, count, pattern, lanes, step)
  int64_t n_key_blocks;
  const int32_t* pattern_begin;  // [n_patterns + 1]: pattern p is pairs [begin[p], begin[p+1])
  const int32_t* pattern_st;     // (s, t) pairs
  double scale;
};

// LayerNorm over the last axis of contiguous [rows, C] tensors (layer_norm_impl.h): storage type
// float32 or bfloat16 (the entry point's suffix), weight / bias and the statistics float32.
struct LayerNormArgs {
  const void* input;
  const void* residual;  // added to input first (same storage), or nullptr
  void* sum;             // input + residual as stored (the block's residual stream), with residual
  void* out;
  const float* weight;   // [C] (ones where the module has none)
  const float* bias;     // [C] (zeros where the module has none)
  float* mean;           // [rows] or nullptr (then rstd too)
  float* rstd;
  int64_t C;
  float eps;
};

struct LayerNormBackwardArgs {
  const void* grad_out;
  const void* input;  // the forward's normalised input (the sum, with a residual)
  const float* mean;
  const float* rstd;
  const float* weight;  // [C] (ones where the module has none)
  void* grad_input;     // or nullptr
  int64_t C;
};

#define DINAT_DECLARE_ISA(isa)                                                                           \
  namespace isa {                                                                                        \
  void forward_f32(const ForwardArgs& a, TaskSource& tasks);                                             \
  void backward_query_f32(const BackwardQueryArgs& a, TaskSource& tasks, double* drpb);                  \
  void backward_key_f32(const BackwardKeyArgs& a, TaskSource& tasks);                                    \
  void backward_key_gather_f32(const BackwardKeyArgs& a, TaskSource& tasks);                             \
  void gelu_backward_bf16(const void* grad, const void* h, void* act, void* grad_h, int64_t begin, int64_t end); \
  void gelu_backward_f32(const void* grad, const void* h, void* act, void* grad_h, int64_t begin, int64_t end);  \
  void layer_norm_bf16(const LayerNormArgs& a, int64_t row_begin, int64_t row_end);                      \
  void layer_norm_f32(const LayerNormArgs& a, int64_t row_begin, int64_t row_end);                       \
  /* adds the rows' grad_weight / grad_bias terms to the float [C] accumulators (nullptr: not wanted) */ \
  void layer_norm_backward_bf16(const LayerNormBackwardArgs& a, int64_t row_begin, int64_t row_end,      \
                                float* grad_weight, float* grad_bias);                                   \
  void layer_norm_backward_f32(const LayerNormBackwardArgs& a, int64_t row_begin, int64_t row_end,       \
                               float* grad_weight, float* grad_bias);                                    \
  }

DINAT_DECLARE_ISA(avx512bf16)
DINAT_DECLARE_ISA(avx512)
DINAT_DECLARE_ISA(avx2)
DINAT_DECLARE_ISA(generic)

// bfloat16 tensors with bfloat16 products (vdpbf16ps; float32 accumulation, softmax and dS): forward,
// backward pass 1 and pass 2
namespace avx512bf16 {
void forward_bf16(const ForwardArgs& a, TaskSource& tasks);
void backward_query_bf16(const BackwardQueryArgs& a, TaskSource& tasks, double* drpb);
void backward_key_bf16(const BackwardKeyArgs& a, TaskSource& tasks);
}  // namespace avx512bf16

namespace generic {
void forward_f64(const ForwardArgs& a, TaskSource& tasks);
void backward_query_f64(const BackwardQueryArgs& a, TaskSource& tasks, double* drpb);
void backward_key_f64(const BackwardKeyArgs& a, TaskSource& tasks);
void backward_key_gather_f64(const BackwardKeyArgs& a, TaskSource& tasks);
}  // namespace generic

}  // namespace dinat
