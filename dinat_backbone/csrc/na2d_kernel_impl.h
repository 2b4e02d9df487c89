// Neighbourhood-attention compute kernels, written with GCC/Clang vector extensions so that one
// source compiles to SSE2, AVX2+FMA or AVX-512 depending on the including translation unit.
//
// Included by kernel_<isa>.cpp after it has set `#pragma GCC target(...)` and defined
//   NA_ISA        namespace name of the instruction set (avx512, avx2, generic)
//   NA_VEC_BYTES  native vector size in bytes (64, 32, 16)
// Deliberately includes no library header with inline functions (see na2d_kernel.h).
//
// Layout of the work (see na2d_kernel.h): a dilated problem is d*d dilation-1 problems on
// residue-class sub-grids; one task is one sub-grid row of queries (forward, backward pass 1) or
// keys (backward pass 2).
//
// Forward, per query:
//   QK   vectorised over the keys of a window row: keys are stored transposed per sub-grid row
//        (kt[row][channel][col]), so for a channel c the K keys of window row a are one
//        contiguous vector load, and logits[a][:] += q[c] * kt[a][c][start:start+W]. No
//        horizontal sums; lanes past K are masked with -inf.
//   softmax fused, with a branch-free polynomial exp.
//   AV   vectorised over head_dim with broadcast weights, 4 independent accumulator sets.
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

// out[c0 : c0 + NV*WD] = out_scale * sum_n w[n] * src[offsets[n] + c0 : ...] over the KK
// neighbours; 4 accumulator sets keep 4 FMA chains in flight.
template <typename T, int WD, int NV, int KKT>
NA_INLINE void gather_chunk(const T* w, int KK_rt, const T* src, const int64_t* offsets, int64_t c0, T* out,
                            T out_scale) {
  typedef typename VecT<T, WD>::type VD;
  const int KK = KKT ? KKT : KK_rt;
  constexpr int S = 4;
  VD acc[S][NV];
  for (int s = 0; s < S; ++s)
    for (int n = 0; n < NV; ++n) acc[s][n] = VD{};
  int i = 0;
  for (; i + S <= KK; i += S) {
    for (int s = 0; s < S; ++s) {
      const T* p = src + offsets[i + s] + c0;
      const T wi = w[i + s];
      for (int n = 0; n < NV; ++n) acc[s][n] += wi * vload<VD>(p + n * WD);
    }
  }
  for (; i < KK; ++i) {
    const T* p = src + offsets[i] + c0;
    const T wi = w[i];
    for (int n = 0; n < NV; ++n) acc[0][n] += wi * vload<VD>(p + n * WD);
  }
  for (int n = 0; n < NV; ++n) vstore(out + c0 + n * WD, ((acc[0][n] + acc[1][n]) + (acc[2][n] + acc[3][n])) * out_scale);
}

// out[0:D] = out_scale * sum_n w[n] * src[offsets[n] + 0:D]
template <typename T, int WD, int KKT>
NA_INLINE void gather(const T* w, int KK_rt, const T* src, const int64_t* offsets, int64_t D, T* out, T out_scale) {
  const int KK = KKT ? KKT : KK_rt;
  int64_t c0 = 0;
  for (; c0 + 4 * WD <= D; c0 += 4 * WD) gather_chunk<T, WD, 4, KKT>(w, KK, src, offsets, c0, out, out_scale);
  switch ((D - c0) / WD) {
    case 3: gather_chunk<T, WD, 3, KKT>(w, KK, src, offsets, c0, out, out_scale); c0 += 3 * WD; break;
    case 2: gather_chunk<T, WD, 2, KKT>(w, KK, src, offsets, c0, out, out_scale); c0 += 2 * WD; break;
    case 1: gather_chunk<T, WD, 1, KKT>(w, KK, src, offsets, c0, out, out_scale); c0 += WD; break;
    default: break;
  }
  for (; c0 < D; ++c0) {
    T acc = 0;
    for (int i = 0; i < KK; ++i) acc += w[i] * src[offsets[i] + c0];
    out[c0] = acc * out_scale;
  }
}

// logits[a][ch] = sum_c qs[c] * rows[a*row_step + c*ysp + ch*W] (qs already scaled)
template <typename T, int W, int KMAX, int NCMAX>
NA_INLINE void window_dot(const T* qs, const T* rows, int64_t row_step, int64_t ysp, int64_t D, int K, int NC,
                          typename VecT<T, W>::type (&acc)[KMAX][NCMAX]) {
  typedef typename VecT<T, W>::type V;
  for (int a = 0; a < K; ++a)
    for (int ch = 0; ch < NC; ++ch) acc[a][ch] = V{};
  for (int64_t c = 0; c < D; ++c) {
    const T qc = qs[c];
    const T* rc = rows + c * ysp;
    for (int a = 0; a < K; ++a)
      for (int ch = 0; ch < NC; ++ch) acc[a][ch] += qc * vload<V>(rc + a * row_step + ch * W);
  }
}

template <typename T, int W, int KT>
void forward_rows(const ForwardArgs& A, int64_t task_begin, int64_t task_end) {
  typedef typename VecT<T, W>::type V;
  constexpr int WD = NA_VEC_BYTES / sizeof(T);
  constexpr int KMAX = KT ? KT : kMaxKernelSize;
  constexpr int NCMAX = (KMAX + W - 1) / W;
  const Geometry& g = A.g;
  const int K = KT ? KT : (int)g.K;
  const int NC = (K + W - 1) / W;
  const int KK = K * K;
  const int64_t d = g.dil, D = g.D, ysp = A.ysp, rp = A.rp;
  const T scale = (T)A.scale;
  const T* kt = static_cast<const T*>(A.kt);
  const T* bias = static_cast<const T*>(A.bias);
  T* weights = static_cast<T*>(A.weights);

  V lane_mask[NCMAX];  // 0 for real keys, -inf for the lanes past K
  for (int ch = 0; ch < NC; ++ch)
    for (int i = 0; i < W; ++i) lane_mask[ch][i] = (ch * W + i < K) ? T(0) : -infinity<T>();

  V logits[KMAX][NCMAX];
  T probs[KMAX * KMAX + NCMAX * W];  // compact K*K weights (+ room for the last row's full-vector store)
  int64_t offsets[KMAX * KMAX];

  for (int64_t task = task_begin; task < task_end; ++task) {
    const TaskIndex ti = decode_task(g, task);
    const int64_t Xr = class_len(g.X, ti.rx, d);
    if (ti.p >= Xr) continue;
    const int64_t Yr = class_len(g.Y, ti.ry, d);
    const int64_t sx = g.x_start[ti.rx * g.Xs + ti.p];
    const int64_t x = ti.p * d + ti.rx;
    const T* kt_rows = kt + ((((ti.b * g.H + ti.h) * d + ti.rx) * d + ti.ry) * g.Xs + sx) * D * ysp;
    const T* bias_rows = bias + (ti.h * (2 * K - 1) + (K - 1 + sx - ti.p)) * rp;
    // value offsets of the window relative to its first key, the same for every query of the row
    const int64_t row_step = d * A.v.sx, col_step = d * A.v.sy;
    for (int a = 0; a < K; ++a)
      for (int t = 0; t < K; ++t) offsets[a * K + t] = a * row_step + t * col_step;
    const T* v_base = at<T>(A.v, ti.b, sx * d + ti.rx, ti.ry, ti.h);

    for (int64_t s = 0; s < Yr; ++s) {
      const int64_t sy = g.y_start[ti.ry * g.Ys + s];
      const int64_t y = s * d + ti.ry;
      const T* qp = at<T>(A.q, ti.b, x, y, ti.h);
      window_dot<T, W, KMAX, NCMAX>(qp, kt_rows + sy, D * ysp, ysp, D, K, NC, logits);
      const int64_t boff = K - 1 + sy - s;
      V vmax = splat<V>(-infinity<T>());
      for (int a = 0; a < K; ++a)
        for (int ch = 0; ch < NC; ++ch) {
          V l = logits[a][ch] * scale + vload<V>(bias_rows + a * rp + boff + ch * W) + lane_mask[ch];
          logits[a][ch] = l;
          vmax = l > vmax ? l : vmax;
        }
      const T m = hmax<T, W>(vmax);
      V vsum = V{};
      for (int a = 0; a < K; ++a)
        for (int ch = 0; ch < NC; ++ch) {
          V e = VecMath<T, W>::exp(logits[a][ch] - m);
          logits[a][ch] = e;
          vsum += e;
        }
      const T inv = T(1) / hsum<T, W>(vsum);
      // compact store: each full-vector store spills past its row into the next, which the next
      // store overwrites (rows are written in order)
      for (int a = 0; a < K; ++a)
        for (int ch = 0; ch < NC; ++ch) vstore(probs + a * K + ch * W, logits[a][ch] * inv);
      if (weights) {
        T* wq = weights + (((ti.b * g.H + ti.h) * g.X + x) * g.Y + y) * KK;
        for (int i = 0; i < KK; ++i) wq[i] = probs[i];
      }
      const T* src = v_base + sy * col_step;
      T* op = at_mut<T>(A.out, ti.b, x, y, ti.h);
      gather<T, WD, KT * KT>(probs, KK, src, offsets, D, op, T(1));
    }
  }
}

template <typename T, int W, int KT>
void backward_query_rows(const BackwardQueryArgs& A, int64_t task_begin, int64_t task_end, double* drpb) {
  typedef typename VecT<T, W>::type V;
  constexpr int WD = NA_VEC_BYTES / sizeof(T);
  constexpr int KMAX = KT ? KT : kMaxKernelSize;
  constexpr int NCMAX = (KMAX + W - 1) / W;
  const Geometry& g = A.g;
  const int K = KT ? KT : (int)g.K;
  const int NC = (K + W - 1) / W;
  const int KK = K * K;
  const int64_t d = g.dil, D = g.D, ysp = A.ysp, rp = A.rp;
  const int64_t bias_rows_n = 2 * K - 1;
  const T* vt = static_cast<const T*>(A.vt);
  const T* weights = static_cast<const T*>(A.weights);
  T* grad_logits = static_cast<T*>(A.grad_logits);

  V lane_keep[NCMAX];  // 1 for real keys, 0 past K
  for (int ch = 0; ch < NC; ++ch)
    for (int i = 0; i < W; ++i) lane_keep[ch][i] = (ch * W + i < K) ? T(1) : T(0);

  V dprob[KMAX][NCMAX];
  T probs[KMAX * KMAX + NCMAX * W];
  T dlog[KMAX * KMAX + NCMAX * W];
  for (int i = 0; i < KMAX * KMAX + NCMAX * W; ++i) probs[i] = dlog[i] = 0;
  int64_t offsets[KMAX * KMAX];
  // drpb of one row of queries in T; added to the per-thread double accumulator per row
  T drpb_row[kMaxKernelSize][2 * kMaxKernelSize + 64];

  for (int64_t task = task_begin; task < task_end; ++task) {
    const TaskIndex ti = decode_task(g, task);
    const int64_t Xr = class_len(g.X, ti.rx, d);
    if (ti.p >= Xr) continue;
    const int64_t Yr = class_len(g.Y, ti.ry, d);
    const int64_t sx = g.x_start[ti.rx * g.Xs + ti.p];
    const int64_t x = ti.p * d + ti.rx;
    const T* vt_rows = vt + ((((ti.b * g.H + ti.h) * d + ti.rx) * d + ti.ry) * g.Xs + sx) * D * ysp;
    const int64_t row_step = d * A.k.sx, col_step = d * A.k.sy;
    for (int a = 0; a < K; ++a)
      for (int t = 0; t < K; ++t) offsets[a * K + t] = a * row_step + t * col_step;
    const T* k_base = at<T>(A.k, ti.b, sx * d + ti.rx, ti.ry, ti.h);
    for (int a = 0; a < K; ++a)
      for (int64_t j = 0; j < rp; ++j) drpb_row[a][j] = 0;

    for (int64_t s = 0; s < Yr; ++s) {
      const int64_t sy = g.y_start[ti.ry * g.Ys + s];
      const int64_t y = s * d + ti.ry;
      const int64_t qidx = ((ti.b * g.H + ti.h) * g.X + x) * g.Y + y;
      const T* go = at<T>(A.grad_out, ti.b, x, y, ti.h);
      window_dot<T, W, KMAX, NCMAX>(go, vt_rows + sy, D * ysp, ysp, D, K, NC, dprob);
      const T* pq = weights + qidx * KK;
      for (int i = 0; i < KK; ++i) probs[i] = pq[i];
      V vdot = V{};
      for (int a = 0; a < K; ++a)
        for (int ch = 0; ch < NC; ++ch) vdot += vload<V>(probs + a * K + ch * W) * lane_keep[ch] * dprob[a][ch];
      const T delta = hsum<T, W>(vdot);
      const int64_t boff = K - 1 + sy - s;
      for (int a = 0; a < K; ++a)
        for (int ch = 0; ch < NC; ++ch) {
          V ds = vload<V>(probs + a * K + ch * W) * lane_keep[ch] * (dprob[a][ch] - delta);
          vstore(dlog + a * K + ch * W, ds);
          T* dr = &drpb_row[a][boff + ch * W];
          vstore(dr, vload<V>(dr) + ds);
        }
      T* dsq = grad_logits + qidx * KK;
      for (int i = 0; i < KK; ++i) dsq[i] = dlog[i];
      const T* src = k_base + sy * col_step;
      T* gq = at_mut<T>(A.grad_q, ti.b, x, y, ti.h);
      gather<T, WD, KT * KT>(dlog, KK, src, offsets, D, gq, (T)A.scale);
    }
    // window row a of query row p has bias row K-1 + sx + a - p
    double* acc = drpb + (ti.h * bias_rows_n + (K - 1 + sx - ti.p)) * rp;
    for (int a = 0; a < K; ++a)
      for (int64_t j = 0; j < rp; ++j) acc[a * rp + j] += (double)drpb_row[a][j];
  }
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
    const int64_t row_idx = ((ti.b * g.H + ti.h) * g.X + x) * g.Y;
    for (int64_t j = j_lo; j <= j_hi; ++j) {
      const int64_t t = ks - g.y_start[ti.ry * g.Ys + j];
      const int64_t y = j * d + ti.ry;
      const int64_t widx = (row_idx + y) * KK + a * K + t;
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
            const int64_t widx = (((ti.b * g.H + ti.h) * g.X + x) * g.Y + y) * KK + a * K + t;
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

#define NA_DISPATCH_K(FN, T, W_OF_K, ...)        \
  switch (a.g.K) {                               \
    case 3: FN<T, W_OF_K(3), 3>(__VA_ARGS__); break;   \
    case 5: FN<T, W_OF_K(5), 5>(__VA_ARGS__); break;   \
    case 7: FN<T, W_OF_K(7), 7>(__VA_ARGS__); break;   \
    case 9: FN<T, W_OF_K(9), 9>(__VA_ARGS__); break;   \
    case 11: FN<T, W_OF_K(11), 11>(__VA_ARGS__); break; \
    case 13: FN<T, W_OF_K(13), 13>(__VA_ARGS__); break; \
    default: FN<T, W_OF_K(kMaxKernelSize), 0>(__VA_ARGS__); break; \
  }

}  // namespace NA_ISA
}  // namespace dinat
