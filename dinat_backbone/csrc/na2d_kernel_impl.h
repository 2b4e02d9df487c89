// Neighbourhood-attention compute kernels, written with GCC/Clang vector extensions so that one
// source compiles to SSE2, AVX2+FMA or AVX-512 depending on the including translation unit.
//
// Included by kernel_<isa>.cpp after it has set `#pragma GCC target(...)` and defined
//   NA_ISA        namespace name of the instruction set (avx512, avx2, generic)
//   NA_VEC_BYTES  native vector size in bytes (64, 32, 16)
// Deliberately includes no library header with inline functions (see na2d_kernel.h).
//
// Forward and backward pass 1 (see na2d_kernel.h): one task is one query row; it is cut into
// blocks of L consecutive queries whose windows have the same relative offsets, and every
// quantity is a vector over the L queries of a block (all lanes useful, no horizontal sums):
//   QK   logits[a][t] += qt[c][y0:y0+L] * kt[row a][c][y0 + (t-m)d : ...] on transposed copies
//   softmax elementwise across the K*K logit vectors, with a branch-free polynomial exp
//   AV   out_t[c] += P[a][t] * vt[row a][c][...], 8 channels in registers, then transposed out.
// Backward pass 2 (dK, dV) runs per key over its inverse neighbourhood on residue-class
// sub-grids, vectorised over head_dim; gathers only, so no races and no atomics.
#include "na2d_kernel.h"

#ifndef NA_ISA
#error "define NA_ISA and NA_VEC_BYTES before including na2d_kernel_impl.h"
#endif

namespace dinat {
namespace NA_ISA {
namespace {

#define NA_INLINE inline __attribute__((always_inline))

template <typename T, int W>
struct VecT {
  typedef T type __attribute__((vector_size(sizeof(T) * W)));
};
template <int W>
struct IntVecT {
  typedef int32_t type __attribute__((vector_size(4 * W)));
};

template <class V, class T>
NA_INLINE V vload(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class T>
NA_INLINE void vstore(T* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
template <class V, class T>
NA_INLINE V splat(T s) {
  return V{} + s;
}

template <typename T>
NA_INLINE T infinity() {
  return __builtin_inf();
}

// exp for x <= 0 (softmax arguments after subtracting the max), ~1 ulp on [-87, 0], exact 0
// below (also for -inf from masked lanes). Cephes expf: x = n ln2 + r, exp(r) by a degree-6
// polynomial, 2^n assembled in the exponent bits.
template <int W>
NA_INLINE typename VecT<float, W>::type vexp_nonpositive(typename VecT<float, W>::type x) {
  typedef typename VecT<float, W>::type V;
  typedef typename IntVecT<W>::type VI;
  const float lo = -87.33654f;
  V xc = x < lo ? splat<V>(lo) : x;
  const V magic = splat<V>(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  V t = xc * 1.44269504088896341f + magic;
  V n = t - magic;
  V r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  VI ni = (VI)t - (VI)magic;
  V two_n = (V)((ni + 127) << 23);
  V res = p * two_n;
  return x < lo ? V{} : res;
}

template <int W>
NA_INLINE typename VecT<double, W>::type vexp_nonpositive_f64(typename VecT<double, W>::type x) {
  typename VecT<double, W>::type out;
  for (int i = 0; i < W; ++i) out[i] = __builtin_exp(x[i]);
  return out;
}

template <typename T, int W>
struct VecMath;
template <int W>
struct VecMath<float, W> {
  typedef typename VecT<float, W>::type V;
  static NA_INLINE V exp(V x) { return vexp_nonpositive<W>(x); }
};
template <int W>
struct VecMath<double, W> {
  typedef typename VecT<double, W>::type V;
  static NA_INLINE V exp(V x) { return vexp_nonpositive_f64<W>(x); }
};

template <typename T, int W>
NA_INLINE T hmax(typename VecT<T, W>::type v) {
  T m = v[0];
  for (int i = 1; i < W; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
template <typename T, int W>
NA_INLINE T hsum(typename VecT<T, W>::type v) {
  T s = v[0];
  for (int i = 1; i < W; ++i) s += v[i];
  return s;
}

struct TaskIndex {
  int64_t b, h, rx, ry, p;
};
NA_INLINE TaskIndex decode_task(const Geometry& g, int64_t task) {
  TaskIndex t;
  t.p = task % g.Xs;
  task /= g.Xs;
  t.ry = task % g.dil;
  task /= g.dil;
  t.rx = task % g.dil;
  task /= g.dil;
  t.h = task % g.H;
  t.b = task / g.H;
  return t;
}
NA_INLINE int64_t class_len(int64_t L, int64_t r, int64_t d) { return (L - r + d - 1) / d; }

template <typename T>
NA_INLINE const T* at(const Strided& s, int64_t b, int64_t x, int64_t y, int64_t h) {
  return static_cast<const T*>(s.ptr) + b * s.sb + x * s.sx + y * s.sy + h * s.sh;
}
template <typename T>
NA_INLINE T* at_mut(const Strided& s, int64_t b, int64_t x, int64_t y, int64_t h) {
  return static_cast<T*>(s.ptr) + b * s.sb + x * s.sx + y * s.sy + h * s.sh;
}

// ---------------------------------------------------------------------------------------------
// Query blocks (forward and backward pass 1)
// ---------------------------------------------------------------------------------------------
// Per block of L queries (y0 .. y0+count-1 of row x, window offset m along y):
//   row_off[a]  start of key row a of the window in a transposed copy [B, H, X, D, yp]
//   col_off[t]  y0 + (t - m) * d: the column of window column t for the block's first query
struct BlockPlan {
  int64_t row_off[kMaxKernelSize];
  int64_t col_off[kMaxKernelSize];
  int64_t y0, count, my, mx;
};

// acc[a*K + t] = sum_c src[c][lanes] * rows[a][c][col_off[t] + lanes]; src is a transposed row
template <typename T, int L, int KT>
NA_INLINE void block_dot(const T* src_row, const T* rows, const BlockPlan& bp, int K, int64_t D, int64_t yp,
                         typename VecT<T, L>::type* acc) {
  typedef typename VecT<T, L>::type V;
  constexpr int KMAX = KT ? KT : kMaxKernelSize;
  for (int a = 0; a < K; ++a) {
    const T* krow = rows + bp.row_off[a];
    V racc[KMAX];
    for (int t = 0; t < K; ++t) racc[t] = V{};
    for (int64_t c = 0; c < D; ++c) {
      const V qv = vload<V>(src_row + c * yp);
      const T* kc = krow + c * yp;
      for (int t = 0; t < K; ++t) racc[t] += qv * vload<V>(kc + bp.col_off[t]);
    }
    for (int t = 0; t < K; ++t) acc[a * K + t] = racc[t];
  }
}

// out_t[c][lanes] = out_scale * sum_{a,t} w[a*K+t][lanes] * rows[a][c][col_off[t] + lanes] for CB
// channels from c0 (CB accumulators stay in registers across the K*K neighbours)
template <typename T, int L, int KT, int CB>
NA_INLINE void block_weighted_sum_chunk(const typename VecT<T, L>::type* w, const T* rows, const BlockPlan& bp, int K,
                                        int64_t yp, int64_t c0, T* out_t, T out_scale) {
  typedef typename VecT<T, L>::type V;
  V acc[CB];
  for (int j = 0; j < CB; ++j) acc[j] = V{};
  for (int a = 0; a < K; ++a) {
    const T* vrow = rows + bp.row_off[a] + c0 * yp;
    for (int t = 0; t < K; ++t) {
      const V wv = w[a * K + t];
      const T* src = vrow + bp.col_off[t];
      for (int j = 0; j < CB; ++j) acc[j] += wv * vload<V>(src + j * yp);
    }
  }
  for (int j = 0; j < CB; ++j) vstore(out_t + (c0 + j) * L, acc[j] * out_scale);
}

template <typename T, int L, int KT>
NA_INLINE void block_weighted_sum(const typename VecT<T, L>::type* w, const T* rows, const BlockPlan& bp, int K,
                                  int64_t D, int64_t yp, T* out_t, T out_scale) {
  constexpr int CB = 8;
  int64_t c0 = 0;
  for (; c0 + CB <= D; c0 += CB) block_weighted_sum_chunk<T, L, KT, CB>(w, rows, bp, K, yp, c0, out_t, out_scale);
  for (; c0 < D; ++c0) block_weighted_sum_chunk<T, L, KT, 1>(w, rows, bp, K, yp, c0, out_t, out_scale);
}

// out[y0 + l][c] = out_t[c][l] for the block's valid lanes
template <typename T, int L>
NA_INLINE void store_transposed(const T* out_t, const Strided& out, int64_t b, int64_t x, int64_t h,
                                const BlockPlan& bp, int64_t D) {
  for (int64_t l = 0; l < bp.count; ++l) {
    T* op = at_mut<T>(out, b, x, bp.y0 + l, h);
    for (int64_t c = 0; c < D; ++c) op[c] = out_t[c * L + l];
  }
}

NA_INLINE void plan_block(const Geometry& g, const LaneGeometry& lg, int64_t b, int64_t h, int64_t x,
                          const int32_t* block, int K, BlockPlan& bp) {
  const int64_t d = g.dil, D = g.D, yp = lg.yp;
  const int64_t first = lg.x_first[x];
  for (int a = 0; a < K; ++a) bp.row_off[a] = ((b * g.H + h) * g.X + first + a * d) * D * yp;
  bp.y0 = block[0];
  bp.count = block[1];
  bp.my = block[2];
  bp.mx = lg.x_m[x];
  for (int t = 0; t < K; ++t) bp.col_off[t] = bp.y0 + (t - bp.my) * d;
}

template <typename T, int L, int KT>
void forward_block(const ForwardArgs& A, int64_t b, int64_t h, int64_t x, const int32_t* block, T* out_buf) {
  typedef typename VecT<T, L>::type V;
  constexpr int KMAX = KT ? KT : kMaxKernelSize;
  const Geometry& g = A.g;
  const int K = KT ? KT : (int)g.K;
  const int KK = K * K;
  const int64_t D = g.D, yp = A.lg.yp, rp = A.rp;
  BlockPlan bp;
  plan_block(g, A.lg, b, h, x, block, K, bp);
  const int64_t row_base = ((b * g.H + h) * g.X + x) * D * yp;

  V prob[KMAX * KMAX];
  block_dot<T, L, KT>(static_cast<const T*>(A.qt) + row_base + bp.y0, static_cast<const T*>(A.kt), bp, K, D, yp, prob);
  // logits = scale * q.k + rpb[h, K-1 + a - mx, K-1 + t - my]; the bias is the same for every lane
  const T scale = (T)A.scale;
  const T* bias = static_cast<const T*>(A.bias) + (h * (2 * K - 1) + (K - 1 - bp.mx)) * rp + (K - 1 - bp.my);
  V vmax = splat<V>(-infinity<T>());
  for (int a = 0; a < K; ++a)
    for (int t = 0; t < K; ++t) {
      V l = prob[a * K + t] * scale + bias[a * rp + t];
      prob[a * K + t] = l;
      vmax = l > vmax ? l : vmax;
    }
  V vsum = V{};
  for (int i = 0; i < KK; ++i) {
    V e = VecMath<T, L>::exp(prob[i] - vmax);
    prob[i] = e;
    vsum += e;
  }
  const V inv = T(1) / vsum;
  for (int i = 0; i < KK; ++i) prob[i] *= inv;
  if (A.weights) {
    T* wq = static_cast<T*>(A.weights) + (((b * g.H + h) * g.X + x) * KK) * g.Y + bp.y0;
    for (int i = 0; i < KK; ++i) {
      if (bp.count == L) vstore(wq + i * g.Y, prob[i]);
      else __builtin_memcpy(wq + i * g.Y, &prob[i], sizeof(T) * bp.count);
    }
  }
  block_weighted_sum<T, L, KT>(prob, static_cast<const T*>(A.vt), bp, K, D, yp, out_buf, T(1));
  store_transposed<T, L>(out_buf, A.out, b, x, h, bp, D);
}

template <typename T, int L, int KT>
void backward_query_block(const BackwardQueryArgs& A, int64_t b, int64_t h, int64_t x, const int32_t* block,
                          double* drpb, T* dq_buf) {
  typedef typename VecT<T, L>::type V;
  constexpr int KMAX = KT ? KT : kMaxKernelSize;
  const Geometry& g = A.g;
  const int K = KT ? KT : (int)g.K;
  const int KK = K * K;
  const int64_t D = g.D, yp = A.lg.yp, rp = A.rp;
  BlockPlan bp;
  plan_block(g, A.lg, b, h, x, block, K, bp);
  const int64_t row_base = ((b * g.H + h) * g.X + x) * D * yp;

  V dlog[KMAX * KMAX];  // dP, then dS
  block_dot<T, L, KT>(static_cast<const T*>(A.got) + row_base + bp.y0, static_cast<const T*>(A.vt), bp, K, D, yp, dlog);
  const int64_t wbase = (((b * g.H + h) * g.X + x) * KK) * g.Y + bp.y0;
  const T* wq = static_cast<const T*>(A.weights) + wbase;
  T* dsq = static_cast<T*>(A.grad_logits) + wbase;
  const bool full = bp.count == L;
  // P of the block; lanes past count are 0, so their dS is 0 and they add nothing to drpb
  V prob[KMAX * KMAX];
  for (int i = 0; i < KK; ++i) {
    if (full) {
      prob[i] = vload<V>(wq + i * g.Y);
    } else {
      prob[i] = V{};
      __builtin_memcpy(&prob[i], wq + i * g.Y, sizeof(T) * bp.count);
    }
  }
  V delta = V{};
  for (int i = 0; i < KK; ++i) delta += prob[i] * dlog[i];
  double* dr = drpb + (h * (2 * K - 1) + (K - 1 - bp.mx)) * rp + (K - 1 - bp.my);
  for (int a = 0; a < K; ++a)
    for (int t = 0; t < K; ++t) {
      const int i = a * K + t;
      V ds = prob[i] * (dlog[i] - delta);
      dlog[i] = ds;
      if (full) vstore(dsq + i * g.Y, ds);
      else __builtin_memcpy(dsq + i * g.Y, &ds, sizeof(T) * bp.count);
      dr[a * rp + t] += (double)hsum<T, L>(ds);
    }
  block_weighted_sum<T, L, KT>(dlog, static_cast<const T*>(A.kt), bp, K, D, yp, dq_buf, (T)A.scale);
  store_transposed<T, L>(dq_buf, A.grad_q, b, x, h, bp, D);
}

template <typename T, int LMAX, int KT>
void forward_rows(const ForwardArgs& A, int64_t task_begin, int64_t task_end) {
  const Geometry& g = A.g;
  T* buf = new T[LMAX * g.D];  // transposed output of one block
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t x = task % g.X, h = (task / g.X) % g.H, b = task / (g.X * g.H);
    for (int64_t i = 0; i < A.lg.n_blocks; ++i) {
      const int32_t* block = A.lg.blocks + 4 * i;
      switch (block[3]) {
        case LMAX: forward_block<T, LMAX, KT>(A, b, h, x, block, buf); break;
        case (LMAX >= 4 ? LMAX / 2 : LMAX): forward_block<T, (LMAX >= 4 ? LMAX / 2 : LMAX), KT>(A, b, h, x, block, buf); break;
        default: forward_block<T, (LMAX >= 8 ? LMAX / 4 : LMAX), KT>(A, b, h, x, block, buf); break;
      }
    }
  }
  delete[] buf;
}

template <typename T, int LMAX, int KT>
void backward_query_rows(const BackwardQueryArgs& A, int64_t task_begin, int64_t task_end, double* drpb) {
  const Geometry& g = A.g;
  T* buf = new T[LMAX * g.D];  // transposed dq of one block
  for (int64_t task = task_begin; task < task_end; ++task) {
    const int64_t x = task % g.X, h = (task / g.X) % g.H, b = task / (g.X * g.H);
    for (int64_t i = 0; i < A.lg.n_blocks; ++i) {
      const int32_t* block = A.lg.blocks + 4 * i;
      switch (block[3]) {
        case LMAX: backward_query_block<T, LMAX, KT>(A, b, h, x, block, drpb, buf); break;
        case (LMAX >= 4 ? LMAX / 2 : LMAX):
          backward_query_block<T, (LMAX >= 4 ? LMAX / 2 : LMAX), KT>(A, b, h, x, block, drpb, buf);
          break;
        default: backward_query_block<T, (LMAX >= 8 ? LMAX / 4 : LMAX), KT>(A, b, h, x, block, drpb, buf); break;
      }
    }
  }
  delete[] buf;
}

// dK, dV for NV*WD channels starting at c0 of one key, summed over the queries whose window holds it
template <typename T, int WD, int NV>
NA_INLINE void key_chunk(const BackwardKeyArgs& A, const TaskIndex& ti, int64_t kp, int64_t ks, int64_t i_lo,
                         int64_t i_hi, int64_t j_lo, int64_t j_hi, int K, int64_t c0, T* gk, T* gv) {
  typedef typename VecT<T, WD>::type VD;
  const Geometry& g = A.g;
  const int64_t d = g.dil;
  const T* weights = static_cast<const T*>(A.weights);
  const T* grad_logits = static_cast<const T*>(A.grad_logits);
  const int KK = K * K;
  VD acc_k[NV], acc_v[NV];
  for (int n = 0; n < NV; ++n) acc_k[n] = acc_v[n] = VD{};
  for (int64_t i = i_lo; i <= i_hi; ++i) {
    const int64_t a = kp - g.x_start[ti.rx * g.Xs + i];
    const int64_t x = i * d + ti.rx;
    const int64_t row_idx = ((ti.b * g.H + ti.h) * g.X + x) * KK;
    for (int64_t j = j_lo; j <= j_hi; ++j) {
      const int64_t t = ks - g.y_start[ti.ry * g.Ys + j];
      const int64_t y = j * d + ti.ry;
      const int64_t widx = (row_idx + a * K + t) * g.Y + y;
      const T ws = grad_logits[widx], wp = weights[widx];
      const T* qp = at<T>(A.q, ti.b, x, y, ti.h) + c0;
      const T* gp = at<T>(A.grad_out, ti.b, x, y, ti.h) + c0;
      for (int n = 0; n < NV; ++n) {
        acc_k[n] += ws * vload<VD>(qp + n * WD);
        acc_v[n] += wp * vload<VD>(gp + n * WD);
      }
    }
  }
  const T scale = (T)A.scale;
  for (int n = 0; n < NV; ++n) {
    vstore(gk + c0 + n * WD, acc_k[n] * scale);
    vstore(gv + c0 + n * WD, acc_v[n]);
  }
}

template <typename T>
void backward_key_rows(const BackwardKeyArgs& A, int64_t task_begin, int64_t task_end) {
  constexpr int WD = NA_VEC_BYTES / sizeof(T);
  const Geometry& g = A.g;
  const int K = (int)g.K;
  const int KK = K * K;
  const int64_t d = g.dil, D = g.D;
  const T* weights = static_cast<const T*>(A.weights);
  const T* grad_logits = static_cast<const T*>(A.grad_logits);
  for (int64_t task = task_begin; task < task_end; ++task) {
    const TaskIndex ti = decode_task(g, task);
    const int64_t kp = ti.p;
    if (kp >= class_len(g.X, ti.rx, d)) continue;
    const int64_t Yr = class_len(g.Y, ti.ry, d);
    const int64_t i_lo = g.x_inv_lo[ti.rx * g.Xs + kp], i_hi = g.x_inv_hi[ti.rx * g.Xs + kp];
    const int64_t kx = kp * d + ti.rx;
    for (int64_t ks = 0; ks < Yr; ++ks) {
      const int64_t j_lo = g.y_inv_lo[ti.ry * g.Ys + ks], j_hi = g.y_inv_hi[ti.ry * g.Ys + ks];
      const int64_t ky = ks * d + ti.ry;
      T* gk = at_mut<T>(A.grad_k, ti.b, kx, ky, ti.h);
      T* gv = at_mut<T>(A.grad_v, ti.b, kx, ky, ti.h);
      int64_t c0 = 0;
      for (; c0 + 2 * WD <= D; c0 += 2 * WD)
        key_chunk<T, WD, 2>(A, ti, kp, ks, i_lo, i_hi, j_lo, j_hi, K, c0, gk, gv);
      for (; c0 + WD <= D; c0 += WD) key_chunk<T, WD, 1>(A, ti, kp, ks, i_lo, i_hi, j_lo, j_hi, K, c0, gk, gv);
      if (c0 < D) {
        for (int64_t c = c0; c < D; ++c) gk[c] = gv[c] = 0;
        for (int64_t i = i_lo; i <= i_hi; ++i) {
          const int64_t a = kp - g.x_start[ti.rx * g.Xs + i];
          const int64_t x = i * d + ti.rx;
          for (int64_t j = j_lo; j <= j_hi; ++j) {
            const int64_t t = ks - g.y_start[ti.ry * g.Ys + j];
            const int64_t y = j * d + ti.ry;
            const int64_t widx = ((((ti.b * g.H + ti.h) * g.X + x) * KK) + a * K + t) * g.Y + y;
            const T* qp = at<T>(A.q, ti.b, x, y, ti.h);
            const T* gp = at<T>(A.grad_out, ti.b, x, y, ti.h);
            for (int64_t c = c0; c < D; ++c) {
              gk[c] += grad_logits[widx] * qp[c] * (T)A.scale;
              gv[c] += weights[widx] * gp[c];
            }
          }
        }
      }
    }
  }
}

}  // namespace

// kernel size as a template argument for the common sizes (loops unrolled, accumulators in
// registers); others run the generic instantiation
#define NA_DISPATCH_K(FN, T, LMAX, ...)                     \
  switch (a.g.K) {                                          \
    case 3: FN<T, LMAX, 3>(__VA_ARGS__); break;             \
    case 5: FN<T, LMAX, 5>(__VA_ARGS__); break;             \
    case 7: FN<T, LMAX, 7>(__VA_ARGS__); break;             \
    case 9: FN<T, LMAX, 9>(__VA_ARGS__); break;             \
    case 11: FN<T, LMAX, 11>(__VA_ARGS__); break;           \
    case 13: FN<T, LMAX, 13>(__VA_ARGS__); break;           \
    default: FN<T, LMAX, 0>(__VA_ARGS__); break;            \
  }

}  // namespace NA_ISA
}  // namespace dinat
