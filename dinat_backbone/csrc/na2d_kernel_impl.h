// Neighbourhood-attention compute kernels, written with GCC/Clang vector extensions so that one
// source compiles to SSE2, AVX2+FMA or AVX-512 depending on the including translation unit.
//
// Included by each kernel_<isa>.cpp (one per instruction set, nothing else in them) after it has
// set `#pragma GCC target(...)` and defined
//   NA_ISA        namespace name of the instruction set (avx512, avx2, generic)
//   NA_VEC_BYTES  native vector size in bytes (64, 32, 16)
//   NA_WITH_F64   1 in the unit that also builds the float64 entry points (generic)
//   NA_BF16_ENTRY 1 in the unit that also builds the bfloat16-product entry points (avx512bf16), and
//   NA_BF16_DOT   1 there where the target has AVX512_BF16 (x86-64)
// Deliberately includes no library header with inline functions (see na2d_kernel.h).
//
// Forward and backward pass 1 (see na2d_kernel.h): one task is a pair of query rows (all heads);
// a row's lanes j = pos * H + h (columns in chunk order, see Geometry) are cut into vectors of L
// lanes whose queries have windows at the same relative offsets, and every quantity is a vector
// over the L lanes (all useful, no horizontal sums), on rows transposed to [D][yp] in a per-thread
// row cache:
//   QK   logits[a][t] += qt[c][j0:j0+L] * kt[row a][c][j0 + (t-m)step : ...]
//   softmax elementwise across the K*K logit vectors, with a branch-free polynomial exp
//   AV   out_t[c] += P[a][t] * vt[row a][c][...], 8 channels in registers, then transposed out.
// Backward pass 2 (dK, dV) gathers over each key's inverse neighbourhood (no scatter, no races, no
// atomics), vectorised across keys and heads the same way (backward_key_rows), or per key,
// vectorised over head_dim, where na2d.cpp picks the gather (backward_key_gather).
#include "na2d_kernel.h"

#ifndef NA_BF16_DOT
#define NA_BF16_DOT 0
#endif
#if NA_BF16_DOT
// only the vdpbf16ps intrinsics; their definitions are extern gnu_inline, never emitted out of line
#include <immintrin.h>
#endif

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

// bfloat16 storage (tensors tagged kBF16): loads widen to float exactly, stores round to nearest
// even like torch's float -> bfloat16 conversion (NaN -> 0x7fc0), so the conversion path gives the
// same bits as converting whole tensors before and after the float32 kernel.
struct Bf16 {
  uint16_t bits;
};

template <int W>
struct Bf16VecT {
  typedef uint16_t half __attribute__((vector_size(2 * W)));
  typedef uint32_t word __attribute__((vector_size(4 * W)));
};

// upper 16 bits of float bit patterns rounded to nearest even (finite values and infinities; NaN
// inputs stay NaN unless their payload sits in the low half only)
template <class U>
NA_INLINE U bf16_round_bits(U u) {
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

template <class V>
NA_INLINE V load_as(const float* p) {
  return vload<V>(p);
}
template <class V>
NA_INLINE V load_as(const double* p) {
  return vload<V>(p);
}
template <class V>
NA_INLINE V load_as(const Bf16* p) {
  typedef Bf16VecT<sizeof(V) / 4> B;
  return (V)(__builtin_convertvector(vload<typename B::half>(p), typename B::word) << 16);
}
template <class V>
NA_INLINE void store_as(float* p, V v) {
  vstore(p, v);
}
template <class V>
NA_INLINE void store_as(double* p, V v) {
  vstore(p, v);
}
template <class V>
NA_INLINE void store_as(Bf16* p, V v) {
  typedef Bf16VecT<sizeof(V) / 4> B;
  const typename B::word nan = (typename B::word)(v != v);
  const typename B::word r = (bf16_round_bits((typename B::word)v) & ~nan) | (nan & 0x7fc0u);
  vstore(p, __builtin_convertvector(r, typename B::half));
}
NA_INLINE float to_compute(float x) { return x; }
NA_INLINE double to_compute(double x) { return x; }
NA_INLINE float to_compute(Bf16 x) {
  const uint32_t u = (uint32_t)x.bits << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
NA_INLINE void put(float* p, float x) { *p = x; }
NA_INLINE void put(double* p, double x) { *p = x; }
NA_INLINE void put(Bf16* p, float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  p->bits = x != x ? uint16_t(0x7fc0) : uint16_t(bf16_round_bits(u));
}

// the first `count` lanes of v stored to / loaded from p (a block's lanes past its last query)
template <class V, class W>
NA_INLINE void store_lanes(W* p, V v, int64_t count) {
  constexpr int L = sizeof(V) / sizeof(v[0]);
  if (count == L) return store_as(p, v);
  W tmp[L];
  store_as(tmp, v);
  __builtin_memcpy(p, tmp, sizeof(W) * count);
}
template <class V, class W>
NA_INLINE V load_lanes(const W* p, int64_t count) {
  constexpr int L = sizeof(V) / sizeof(V{}[0]);
  if (count == L) return load_as<V>(p);
  W tmp[L] = {};
  __builtin_memcpy(tmp, p, sizeof(W) * count);
  return load_as<V>(tmp);
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

// 2^t for t <= 0 where the result is rounded to bfloat16 (the softmax weights of the bfloat16
// products): 2^t = 2^n 2^f with n = round(t), |f| <= 1/2, 2^f by a degree-3 polynomial (relative
// error 7.5e-5 on [-1/2, 1/2], against up to 2e-3 from rounding to bfloat16), 2^n by vscalefps;
// exact 0 below -126 (2^-126 = exp(-87.3), where vexp_nonpositive returns 0 too), NaN stays NaN.
// Nine instructions a vector with the multiply-add that makes t, against vexp_nonpositive's
// seventeen and a subtraction. Units without NA_BF16_DOT (which never take the bfloat16 products)
// fall back to vexp_nonpositive.
template <int L>
NA_INLINE typename VecT<float, L>::type vexp2_nonpositive_bf16(typename VecT<float, L>::type t) {
#if !NA_BF16_DOT
  return vexp_nonpositive<L>(t * 0.693147180559945309f);
#else
  typedef typename VecT<float, L>::type V;
  const float lo = -126.0f;
  // the masked forms with an explicit source: the plain ones start from an undefined vector, which
  // GCC 12 warns about (-Wmaybe-uninitialized); max(lo, t) is t for a NaN t (the second operand)
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  V tc, n;
  if constexpr (L == 16) {
    tc = (V)_mm512_mask_max_ps((__m512)t, 0xffff, _mm512_set1_ps(lo), (__m512)t);
    n = (V)_mm512_mask_roundscale_ps((__m512)tc, 0xffff, (__m512)tc, kNearest);
  } else if constexpr (L == 8) {
    tc = (V)_mm256_max_ps(_mm256_set1_ps(lo), (__m256)t);
    n = (V)_mm256_mask_roundscale_ps((__m256)tc, 0xff, (__m256)tc, kNearest);
  } else {
    tc = (V)_mm_max_ps(_mm_set1_ps(lo), (__m128)t);
    n = (V)_mm_mask_roundscale_ps((__m128)tc, 0xf, (__m128)tc, kNearest);
  }
  const V f = tc - n;
  V p = splat<V>(5.51713444e-2f);
  p = p * f + 2.42610335e-1f;
  p = p * f + 6.93260968e-1f;
  p = p * f + 9.99928117e-1f;
  // 0 where t < lo (not-less-than is true for unordered lanes, which stay NaN)
  if constexpr (L == 16) {
    const __mmask16 keep = _mm512_cmp_ps_mask((__m512)t, _mm512_set1_ps(lo), _CMP_NLT_UQ);
    return (V)_mm512_maskz_scalef_ps(keep, (__m512)p, (__m512)n);
  } else if constexpr (L == 8) {
    const __mmask8 keep = _mm256_cmp_ps_mask((__m256)t, _mm256_set1_ps(lo), _CMP_NLT_UQ);
    return (V)_mm256_maskz_scalef_ps(keep, (__m256)p, (__m256)n);
  } else {
    const __mmask8 keep = _mm_cmp_ps_mask((__m128)t, _mm_set1_ps(lo), _CMP_NLT_UQ);
    return (V)_mm_maskz_scalef_ps(keep, (__m128)p, (__m128)n);
  }
#endif
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


// the key of a pass-2 gather: batch, head, residue classes of its row and column
struct TaskIndex {
  int64_t b, h, rx, ry;
};
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
// Transposed copies
// ---------------------------------------------------------------------------------------------
// In-register transpose of a W x W tile (float): log2(W) stages; stage B swaps the off-diagonal
// B x B sub-blocks of every pair of rows (i, i + B), two two-source shuffles per pair.
template <int W, int B>
NA_INLINE void transpose_stage(typename VecT<float, W>::type* r) {
  typedef typename VecT<float, W>::type V;
  typedef typename IntVecT<W>::type VI;
  VI m_lo, m_hi;
  for (int c = 0; c < W; ++c) {
    m_lo[c] = (c & B) ? W + c - B : c;
    m_hi[c] = (c & B) ? W + c : c + B;
  }
  for (int i = 0; i < W; ++i)
    if (!(i & B)) {
      const V a = r[i], b = r[i + B];
      r[i] = __builtin_shuffle(a, b, m_lo);
      r[i + B] = __builtin_shuffle(a, b, m_hi);
    }
}
template <int W>
NA_INLINE void transpose_tile(typename VecT<float, W>::type* r) {
  if constexpr (W >= 16) transpose_stage<W, 8>(r);
  if constexpr (W >= 8) transpose_stage<W, 4>(r);
  if constexpr (W >= 4) transpose_stage<W, 2>(r);
  if constexpr (W >= 2) transpose_stage<W, 1>(r);
}

// Row layouts of the bfloat16 dot-product path (NA_BF16_DOT): each 32-bit word holds the two
// bfloat16 values that one vdpbf16ps lane multiplies and adds, low half first.
//   channel_pairs  word[cp][j] = (row[2cp][j], row[2cp+1][j])   (0 past D): a reduction over
//                  channels (q.k, dO.v) takes two channels per instruction
//   shifted_pairs  word[c][j] = (row[c][j], row[c][j + shift])  (0 past the row), shift = the
//                  step of lane j's chunk (see Geometry):
//                  lanes of window columns t and t+1 (weights.v, dS.k) take two columns per instruction
// Both are packed straight from the bfloat16 tensor (pack_row): a channel pair is one 32-bit word
// of the source already, and lane j + shift is the same head at position pos + shift / H, so a
// shifted word joins two source columns. (Packing a float row first and pairing it in a second
// pass over the row made the bfloat16 op ~2 % slower, forward and backward.)
enum class RowLayout { plain, channel_pairs, shifted_pairs };

// rows of the packed [rows][yp] layout of a [.., D] tensor
NA_INLINE int64_t layout_rows(RowLayout layout, int64_t D) { return layout == RowLayout::channel_pairs ? (D + 1) / 2 : D; }

// words c .. c+W-1 (V holds W words) of one lane in a pair layout, from its source column s (and,
// for shifted pairs, the column s2 one step further, nullptr past the row)
template <class V, RowLayout LAYOUT>
NA_INLINE V pair_words(const Bf16* s, const Bf16* s2, int64_t c) {
  typedef Bf16VecT<sizeof(V) / 4> B;
  if constexpr (LAYOUT == RowLayout::channel_pairs) return vload<V>(s + 2 * c);
  const typename B::word lo = __builtin_convertvector(vload<typename B::half>(s + c), typename B::word);
  if (!s2) return (V)lo;
  return (V)(lo | (__builtin_convertvector(vload<typename B::half>(s2 + c), typename B::word) << 16));
}
// word c of a pair layout (channel pairs: 0 in the high half past an odd D)
template <RowLayout LAYOUT>
NA_INLINE float pair_word(const Bf16* s, const Bf16* s2, int64_t c, int64_t D) {
  uint32_t w;
  if constexpr (LAYOUT == RowLayout::channel_pairs)
    w = s[2 * c].bits | (2 * c + 1 < D ? uint32_t(s[2 * c + 1].bits) << 16 : 0u);
  else
    w = s[c].bits | (s2 ? uint32_t(s2[c].bits) << 16 : 0u);
  float f;
  __builtin_memcpy(&f, &w, 4);
  return f;
}

// one row (task = b * X + x) of a tensor stored as S into row[D][yp] of T, lanes in chunk order
// (lane j = pos * H + h holds column y_of_pos[pos], see Geometry); W = 1: scalar copies (double).
// LAYOUT other than plain: a bfloat16 tensor (S = Bf16, T = float) into that pair layout
template <typename T, int W, typename S, RowLayout LAYOUT = RowLayout::plain>
NA_INLINE void pack_row(const PackArgs& A, int64_t task, T* row) {
  constexpr bool PAIRED = LAYOUT != RowLayout::plain;
  constexpr bool SHIFTED = LAYOUT == RowLayout::shifted_pairs;
  static_assert(!PAIRED || (sizeof(T) == 4 && sizeof(S) == 2), "pair layouts pack bfloat16 into 32-bit words");
  const Strided& src = A.src;
  const int64_t D = A.D, yp = A.yp, H = A.H, YH = A.Y * A.H, rows = layout_rows(LAYOUT, D);
  // the words of lane (pos, h) at row c (shifted pairs: s2 is the column step / H positions on)
  auto word = [&](const S* s, const S* s2, int64_t c) -> T {
    if constexpr (PAIRED) return pair_word<LAYOUT>(s, s2, c, D);
    else return to_compute(s[c]);
  };
  // shifted pairs: the chunk of the lanes being packed, whose step (a multiple of H) is the shift
  int64_t chunk = 0;
  auto shifted_column = [&](const S* base, int64_t j, int64_t pos, int64_t h) -> const S* {
    while (j >= A.chunks[3 * chunk + 1] && chunk + 1 < A.n_chunks) ++chunk;
    const int64_t p2 = pos + A.chunks[3 * chunk + 2] / H;
    return p2 < A.Y ? base + A.y_of_pos[p2] * src.sy + h * src.sh : nullptr;
  };
  {
    const int64_t x = task % A.X, b = task / A.X;
    const S* base = static_cast<const S*>(src.ptr) + b * src.sb + x * src.sx;
    int64_t j = 0;
    int64_t pos = 0, h = 0;  // lane j = pos * H + h, stepped rather than divided (64-bit divisions per
                             // lane cost as much as the copy itself)
    if constexpr (W > 1) {
      typedef typename VecT<T, W>::type V;
      const S* ptrs[W];
      const S* ptrs2[W] = {};
      // a column's heads contiguous ([.., H, D] with D contiguous, also q, k, v unbound from one qkv
      // projection, whose columns lie 3 * H * D apart): the columns of the next group are
      // prefetched while this one is transposed (a row is a few 4 KiB pages, each of which restarts
      // the hardware prefetcher, and unit-stride streams are all it follows; measured 40 % faster
      // on dense rows, 10 % on unbound views)
      const bool heads_contiguous = src.sh == D;
      const int64_t column_bytes = H * D * static_cast<int64_t>(sizeof(S));
      // rows packed W at a time: W words of a pair layout hold 2W channels (channel pairs)
      const int64_t full = LAYOUT == RowLayout::channel_pairs ? D / 2 : D;
      for (; j + W <= YH; j += W) {
        for (int l = 0; l < W; ++l) {
          ptrs[l] = base + A.y_of_pos[pos] * src.sy + h * src.sh;
          if constexpr (SHIFTED) ptrs2[l] = shifted_column(base, j + l, pos, h);
          if (++h == H) h = 0, ++pos;
        }
        if (heads_contiguous && j + 2 * W <= YH) {
          // lanes j + W .. j + 2W - 1 start at (pos, h): columns pos .. pos + (h + W - 1) / H
          const int64_t last = pos + (h + W - 1) / H;
          for (int64_t p = pos; p <= last; ++p) {
            const char* col = reinterpret_cast<const char*>(base + A.y_of_pos[p] * src.sy);
            for (int64_t off = 0; off < column_bytes; off += 64) __builtin_prefetch(col + off);
          }
        }
        int64_t c = 0;
        for (; c + W <= full; c += W) {
          V r[W];
          for (int l = 0; l < W; ++l) {
            if constexpr (PAIRED) r[l] = pair_words<V, LAYOUT>(ptrs[l], ptrs2[l], c);
            else r[l] = load_as<V>(ptrs[l] + c);
          }
          transpose_tile<W>(r);
          for (int l = 0; l < W; ++l) vstore(row + (c + l) * yp + j, r[l]);
        }
        for (; c < rows; ++c)
          for (int l = 0; l < W; ++l) row[c * yp + j + l] = word(ptrs[l], ptrs2[l], c);
      }
    }
    for (; j < YH; ++j) {
      const S* s = base + A.y_of_pos[pos] * src.sy + h * src.sh;
      const S* s2 = nullptr;
      if constexpr (SHIFTED) s2 = shifted_column(base, j, pos, h);
      for (int64_t c = 0; c < rows; ++c) row[c * yp + j] = word(s, s2, c);
      if (++h == H) h = 0, ++pos;
    }
    for (int64_t c = 0; c < rows; ++c)
      for (int64_t jj = YH; jj < yp; ++jj) row[c * yp + jj] = T(0);
  }
}


// lanes of the in-register transpose used to pack a row of T
template <typename T>
constexpr int pack_width() {
  return sizeof(T) == 4 ? NA_VEC_BYTES / 4 : 1;
}

// a row in the given layout, for the tensor's storage type (bfloat16 rows widen to float on the
// way, or go straight into a pair layout, which only bfloat16 tensors use)
template <typename T>
NA_INLINE void pack_layout(const PackArgs& A, int64_t task, T* dst, RowLayout layout) {
  if constexpr (sizeof(T) == 4)
    if (A.src.elem == kElemBF16) {
      if (layout == RowLayout::channel_pairs)
        return pack_row<T, pack_width<T>(), Bf16, RowLayout::channel_pairs>(A, task, dst);
      if (layout == RowLayout::shifted_pairs)
        return pack_row<T, pack_width<T>(), Bf16, RowLayout::shifted_pairs>(A, task, dst);
      return pack_row<T, pack_width<T>(), Bf16>(A, task, dst);
    }
  pack_row<T, pack_width<T>(), T>(A, task, dst);
}

// Per-thread cache of transposed rows ([D][yp] + 16 zeros each, see PackArgs) of one tensor,
// direct-mapped by the row's index inside its residue class. A thread runs its tasks in order and
// consecutive tasks need mostly the same rows (the windows of neighbouring rows overlap), so each
// row is transposed about once per thread, and the copies stay in cache: transposing whole tensors
// in a separate pass made a tensor-sized round trip through memory and took ~20 % of the op.
// Callers keep at most n_slots rows of consecutive sub-grid index in use at a time. Rows are in
// `layout` (pair layouts hold 32-bit words in the float slots, see RowLayout).
template <typename T>
struct RowCache {
  const PackArgs& src;
  int64_t n_slots, slot_elems, dil;
  RowLayout layout;
  T* buf;
  int64_t* tags;
  RowCache(const PackArgs& s, int64_t slots, int64_t d, RowLayout lay = RowLayout::plain)
      : src(s), n_slots(slots), slot_elems(s.D * s.yp + 16), dil(d), layout(lay),
        buf(new T[slots * (s.D * s.yp + 16)]()), tags(new int64_t[slots]) {
    for (int64_t i = 0; i < n_slots; ++i) tags[i] = -1;
  }
  ~RowCache() {
    delete[] buf;
    delete[] tags;
  }
  const T* row(int64_t b, int64_t x) {
    const int64_t slot = (x / dil) % n_slots, tag = b * src.X + x;
    T* dst = buf + slot * slot_elems;
    if (tags[slot] != tag) {
      pack_layout<T>(src, tag, dst, layout);
      tags[slot] = tag;
    }
    return dst;
  }
};

// ---------------------------------------------------------------------------------------------
// Query rows (forward and backward pass 1)
// ---------------------------------------------------------------------------------------------
// A task is a group of up to kRowGroup query rows of one residue class (all heads; see
// LaneGeometry). Each row's vectors ("blocks", see plan_query_blocks in na2d.cpp) are processed
// key row by key row over the union of the rows' windows: for key row kr, every block runs
// against kr for all rows of the group whose window holds kr (a contiguous range of them), so one
// key load feeds that many multiply-adds. Consecutive blocks read overlapping stretches of the
// same key row, so these stay in L1 (per block, the K window rows x D channels touch far more than
// L1 holds, which made the block-at-a-time order stream everything from L2, worst with dilation).
// Per-block intermediates (logits / weights, output channels) live in row buffers of LMAX-lane
// slots, one set per row of the group.

template <int N>
struct IntC {
  static constexpr int value = N;
};

// calls f(IntC<L>) with the block width of this block (LMAX, LMAX/2, LMAX/4)
template <int LMAX, class F>
NA_INLINE void with_lanes(int lanes, F&& f) {
  constexpr int L2 = LMAX >= 4 ? LMAX / 2 : LMAX;
  constexpr int L4 = LMAX >= 8 ? LMAX / 4 : L2;
  if (lanes == LMAX) f(IntC<LMAX>{});
  else if (lanes == L2) f(IntC<L2>{});
  else f(IntC<L4>{});
}

// calls f(IntC<n>) for n = 1..kRowGroup active rows
template <class F>
NA_INLINE void with_rows(int n, F&& f) {
  static_assert(kRowGroup == 2, "with_rows dispatches 1 or 2 rows");
  if (n == 2) f(IntC<2>{});
  else f(IntC<1>{});
}

// lane of window column t for the block's first lane: j0 + (t - m) * step (see Geometry)
NA_INLINE void block_cols(const int32_t* block, int K, int64_t* col) {
  for (int t = 0; t < K; ++t) col[t] = block[0] + (t - block[2]) * block[4];
}

// acc + a * b, or with PAIRS (rows in a pair layout) acc + a.lo * b.lo + a.hi * b.hi per lane of
// bfloat16 pairs (vdpbf16ps)
template <bool PAIRS, class V>
NA_INLINE V madd(V acc, V a, V b) {
#if NA_BF16_DOT
  if constexpr (PAIRS) {
    if constexpr (sizeof(V) == 64) return (V)_mm512_dpbf16_ps((__m512)acc, (__m512bh)a, (__m512bh)b);
    else if constexpr (sizeof(V) == 32) return (V)_mm256_dpbf16_ps((__m256)acc, (__m256bh)a, (__m256bh)b);
    else return (V)_mm_dpbf16_ps((__m128)acc, (__m128bh)a, (__m128bh)b);
  }
#else
  static_assert(!PAIRS, "pair layouts need a unit built with NA_BF16_DOT");
#endif
  return acc + a * b;
}

// dst[r][t][lanes] = sum_c src[r][c][lanes] * krow[c][col[t] + lanes], t < K, for NR rows r
// (PAIRS: D counts channel pairs)
// sharing the key loads (dst slots LMAX apart)
template <typename T, int L, int KT, int NR, bool PAIRS>
NA_INLINE void block_dot_rows(const T* const* src, const T* krow, const int64_t* col, int K, int64_t D, int64_t yp,
                              T* const* dst, int64_t slot) {
  typedef typename VecT<T, L>::type V;
  constexpr int KMAX = KT ? KT : kMaxKernelSize;
  V racc[NR][KMAX];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < K; ++t) racc[r][t] = V{};
  for (int64_t c = 0; c < D; ++c) {
    V qv[NR];
    for (int r = 0; r < NR; ++r) qv[r] = vload<V>(src[r] + c * yp);
    const T* kc = krow + c * yp;
    for (int t = 0; t < K; ++t) {
      const V kv = vload<V>(kc + col[t]);
      for (int r = 0; r < NR; ++r) racc[r][t] = madd<PAIRS>(racc[r][t], qv[r], kv);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < K; ++t) vstore(dst[r] + t * slot, racc[r][t]);
}

// out[r][c][lanes] (+)= sum_t w[r][t][lanes] * vrow[c][col[t] + lanes] for CB channels and NR rows
// sharing the value loads (slots LMAX apart); first[r]: start from zero rather than out[r]
// (PAIRS: slot t holds the weights of columns t and t+1, vrow is in shifted pairs)
template <typename T, int L, int CB, int NR, bool PAIRS>
NA_INLINE void block_wsum_rows_chunk(const T* const* w, const T* vrow, const int64_t* col, int K, int64_t yp,
                                     T* const* out, int64_t c0, int64_t slot, const bool* first) {
  typedef typename VecT<T, L>::type V;
  V acc[NR][CB];
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < CB; ++j) acc[r][j] = first[r] ? V{} : vload<V>(out[r] + (c0 + j) * slot);
  for (int t = 0; t < K; t += PAIRS ? 2 : 1) {
    V wv[NR];
    for (int r = 0; r < NR; ++r) wv[r] = vload<V>(w[r] + t * slot);
    const T* src = vrow + c0 * yp + col[t];
    for (int j = 0; j < CB; ++j) {
      const V vv = vload<V>(src + j * yp);
      for (int r = 0; r < NR; ++r) acc[r][j] = madd<PAIRS>(acc[r][j], wv[r], vv);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int j = 0; j < CB; ++j) vstore(out[r] + (c0 + j) * slot, acc[r][j]);
}

template <typename T, int L, int NR, bool PAIRS>
NA_INLINE void block_wsum_rows(const T* const* w, const T* vrow, const int64_t* col, int K, int64_t D, int64_t yp,
                               T* const* out, int64_t slot, const bool* first) {
  // accumulators in registers: NR * CB of them plus NR weights and a value (16 vector registers
  // below AVX-512, 32 with it)
  constexpr int CB = (NA_VEC_BYTES >= 64 || NR == 1) ? 8 : 4;
  int64_t c0 = 0;
  for (; c0 + CB <= D; c0 += CB) block_wsum_rows_chunk<T, L, CB, NR, PAIRS>(w, vrow, col, K, yp, out, c0, slot, first);
  for (; c0 < D; ++c0) block_wsum_rows_chunk<T, L, 1, NR, PAIRS>(w, vrow, col, K, yp, out, c0, slot, first);
}

// out[y][h][c] = scale * out_t[c][l] for the block's valid lanes l (j0 + l = pos * H + h, y =
// y_of_pos[pos], see Geometry)
template <typename T, typename S>
NA_INLINE void store_block_as(const T* out_t, int64_t slot, const Strided& out, int64_t b, int64_t x, int64_t H,
                              const int32_t* block, int64_t D, T scale, const int32_t* y_of_pos) {
  int64_t pos = block[0] / H, h = block[0] - pos * H;
  constexpr int W = pack_width<T>();
  if constexpr (W > 1) {
    // a full block with D contiguous: W x W tiles transpose in registers into D-long stores, one
    // output row per lane
    if (block[1] == W && slot >= W && out.sh == D && D % W == 0) {
      typedef typename VecT<T, W>::type V;
      S* ptrs[W];
      for (int l = 0; l < W; ++l) {
        ptrs[l] = at_mut<S>(out, b, x, y_of_pos[pos], h);
        if (++h == H) h = 0, ++pos;
      }
      for (int64_t c0 = 0; c0 < D; c0 += W) {
        V r[W];
        for (int l = 0; l < W; ++l) r[l] = vload<V>(out_t + (c0 + l) * slot);
        transpose_tile<W>(r);
        for (int l = 0; l < W; ++l) store_as(ptrs[l] + c0, r[l] * scale);
      }
      return;
    }
  }
  for (int64_t l = 0; l < block[1]; ++l) {
    S* op = at_mut<S>(out, b, x, y_of_pos[pos], h);
    for (int64_t c = 0; c < D; ++c) put(op + c, out_t[c * slot + l] * scale);
    if (++h == H) h = 0, ++pos;
  }
}
// store_block_as for the output's storage type
template <typename T>
NA_INLINE void store_block(const T* out_t, int64_t slot, const Strided& out, int64_t b, int64_t x, int64_t H,
                           const int32_t* block, int64_t D, T scale, const int32_t* y_of_pos) {
  if constexpr (sizeof(T) == 4)
    if (out.elem == kElemBF16) return store_block_as<T, Bf16>(out_t, slot, out, b, x, H, block, D, scale, y_of_pos);
  store_block_as<T, T>(out_t, slot, out, b, x, H, block, D, scale, y_of_pos);
}

// Per-thread buffers for the kRowGroup rows of a task, row r at offset r * (size of one):
// lbuf [n_blocks][K*K][LMAX] (logits, weights, dS), obuf [n_blocks][D][LMAX], srow [D][yp] + 16
// zeros: the query row (or grad_out row), transposed here rather than in a separate pass over the
// whole tensor.
template <typename T>
struct RowBuffers {
  int64_t lsize, osize, ssize;
  T* lbuf;
  T* obuf;
  T* srow;
  RowBuffers(int64_t nb, int64_t KK, int64_t D, int64_t lmax, int64_t yp)
      : lsize(nb * KK * lmax), osize(nb * D * lmax), ssize(D * yp + 16),
        lbuf(new T[kRowGroup * lsize]), obuf(new T[kRowGroup * osize]), srow(new T[kRowGroup * ssize]()) {}
  ~RowBuffers() {
    delete[] lbuf;
    delete[] obuf;
    delete[] srow;
  }
  T* l(int r) const { return lbuf + r * lsize; }
  T* o(int r) const { return obuf + r * osize; }
  T* s(int r) const { return srow + r * ssize; }
};

// The rows of a group: x[r] = x0 + r * d, their first key rows and key-row offsets in the group
struct RowGroup {
  int n;
  int64_t x[kRowGroup], first[kRowGroup], off[kRowGroup];  // off[r] = (first[r] - first[0]) / d
  int64_t n_keys;                                          // key rows in the union of the windows
};
NA_INLINE RowGroup row_group(const Geometry& g, const LaneGeometry& lg, int64_t group, int K) {
  RowGroup rg;
  const int32_t* gr = lg.groups + 2 * group;
  rg.n = gr[1];
  for (int r = 0; r < rg.n; ++r) {
    rg.x[r] = gr[0] + r * g.dil;
    rg.first[r] = lg.x_first[rg.x[r]];
    rg.off[r] = (rg.first[r] - rg.first[0]) / g.dil;
  }
  rg.n_keys = rg.off[rg.n - 1] + K;
  return rg;
}

// Row pass shared by forward and backward pass 1, for the rows r of a group:
//   l(r)[i][a*K + t] = s(r) . rows[first[r] + a*d] at the window columns of block i   (QK or dO.V)
//   per_block(r, i, block, L)   (softmax or dS, in place in l(r))
//   o(r)[i][c] = sum_{a,t} l(r)[i][a*K+t] * wrows[first[r] + a*d][c][cols]   (AV or dS.K)
template <typename T, int LMAX, int KT, bool PAIRS, class PerBlock>
NA_INLINE void row_pass(const Geometry& g, const LaneGeometry& lg, int64_t b, const RowGroup& rg,
                        RowCache<T>& dot_rows, RowCache<T>& sum_rows, RowBuffers<T>& rb, PerBlock&& per_block) {
  const int K = KT ? KT : (int)g.K;
  const int64_t KK = K * K, D = g.D, yp = lg.yp, nb = lg.n_blocks;
  int64_t col[kMaxKernelSize];
  // rows whose window holds key row u of the union: r_lo .. r_lo + count - 1 (contiguous, since
  // window starts do not decrease along a residue class), window row of row r: u - off[r]
  auto active = [&](int64_t u, int& r_lo, int& count) {
    r_lo = -1;
    count = 0;
    for (int r = 0; r < rg.n; ++r)
      if (u >= rg.off[r] && u < rg.off[r] + K) {
        if (r_lo < 0) r_lo = r;
        ++count;
      }
  };
  // calls body(u, r_lo, count, row, i, block) for every key row u of the union (row: its transposed
  // copy from `rows`) and every block i, the block's window columns in col
  auto sweep = [&](RowCache<T>& rows, auto&& body) {
    for (int64_t u = 0; u < rg.n_keys; ++u) {
      int r_lo, count;
      active(u, r_lo, count);
      const T* row = rows.row(b, rg.first[0] + u * g.dil);
      for (int64_t i = 0; i < nb; ++i) {
        const int32_t* block = lg.blocks + kBlockInts * i;
        block_cols(block, K, col);
        body(u, r_lo, count, row, i, block);
      }
    }
  };
  sweep(dot_rows, [&](int64_t u, int r_lo, int count, const T* krow, int64_t i, const int32_t* block) {
    const T* src[kRowGroup];
    T* dst[kRowGroup];
    for (int j = 0; j < count; ++j) {
      const int r = r_lo + j;
      src[j] = rb.s(r) + block[0];
      dst[j] = rb.l(r) + (i * KK + (u - rg.off[r]) * K) * LMAX;
    }
    with_lanes<LMAX>(block[3], [&](auto lc) {
      with_rows(count, [&](auto rc) {
        block_dot_rows<T, decltype(lc)::value, KT, decltype(rc)::value, PAIRS>(src, krow, col, K, PAIRS ? (D + 1) / 2 : D,
                                                                              yp, dst, LMAX);
      });
    });
  });
  for (int r = 0; r < rg.n; ++r)
    for (int64_t i = 0; i < nb; ++i) {
      const int32_t* block = lg.blocks + kBlockInts * i;
      with_lanes<LMAX>(block[3], [&](auto lc) { per_block(r, i, block, lc); });
    }
  sweep(sum_rows, [&](int64_t u, int r_lo, int count, const T* vrow, int64_t i, const int32_t* block) {
    const T* w[kRowGroup];
    T* out[kRowGroup];
    bool first[kRowGroup];
    for (int j = 0; j < count; ++j) {
      const int r = r_lo + j;
      w[j] = rb.l(r) + (i * KK + (u - rg.off[r]) * K) * LMAX;
      out[j] = rb.o(r) + i * D * LMAX;
      first[j] = u == rg.off[r];
    }
    with_lanes<LMAX>(block[3], [&](auto lc) {
      with_rows(count, [&](auto rc) {
        block_wsum_rows<T, decltype(lc)::value, decltype(rc)::value, PAIRS>(w, vrow, col, K, D, yp, out, LMAX, first);
      });
    });
  });
}

// two float vectors of L lanes into one vector of bfloat16 pairs (lo[l], hi[l]) per 32-bit lane,
// rounded to nearest even (see RowLayout); with AVX512_BF16's conversion, which takes float
// denormals (below 1.2e-38: softmax weights and dS of no weight) as zero
template <int L>
NA_INLINE typename VecT<float, L>::type round_to_pairs(typename VecT<float, L>::type lo, typename VecT<float, L>::type hi) {
  typedef typename VecT<float, L>::type V;
#if NA_BF16_DOT
  if constexpr (L == 16) {
    // vcvtne2ps2bf16 puts lo's 16 values in the low half and hi's in the high half; interleave them
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                                         20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    return (V)_mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh((__m512)hi, (__m512)lo));
  }
#endif
  typedef typename Bf16VecT<L>::word U;
  return (V)(bf16_round_bits((U)lo) | (bf16_round_bits((U)hi) << 16));
}

// the K*K float vectors of a block (slots LMAX apart) into bfloat16 pairs of window columns
// (t, t+1) at slot t of every even t (see RowLayout::shifted_pairs), rounded to nearest even
template <int L>
NA_INLINE void to_column_pairs(float* p, int K, int64_t slot) {
  typedef typename VecT<float, L>::type V;
  for (int a = 0; a < K; ++a)
    for (int t = 0; t < K; t += 2) {
      float* lo = p + (a * K + t) * slot;
      vstore(lo, round_to_pairs<L>(vload<V>(lo), t + 1 < K ? vload<V>(lo + slot) : V{}));
    }
}

// PAIRS: bfloat16 products (NA_BF16_DOT units): q / dO rows and the dot rows in channel pairs, the
// sum rows in shifted pairs, softmax weights / dS rounded to bfloat16 pairs before the weighted sum;
// the softmax, dS and the rpb gradient are computed in float32 (WS: the storage type of the saved
// weights and dS, bfloat16 for bfloat16 tensors, see na2d_kernel.h)
template <typename T, int LMAX, int KT, bool PAIRS, typename WS>
void forward_rows(const ForwardArgs& A, TaskSource& tasks) {
  const Geometry& g = A.g;
  const int K = KT ? KT : (int)g.K;
  const int KK = K * K, K2 = 2 * K - 1;
  const int64_t YH = g.Y * g.H, D = g.D;
  RowBuffers<T> rb(A.lg.n_blocks, KK, D, LMAX, A.lg.yp);
  RowCache<T> kc(A.k, K + kRowGroup, g.dil, PAIRS ? RowLayout::channel_pairs : RowLayout::plain),
      vc(A.v, K + kRowGroup, g.dil, PAIRS ? RowLayout::shifted_pairs : RowLayout::plain);
  const T scale = (T)A.scale;
  for (int64_t task; (task = take_task(tasks)) >= 0;) {
    const int64_t group = task % A.lg.n_groups, b = task / A.lg.n_groups;
    const RowGroup rg = row_group(g, A.lg, group, K);
    auto softmax = [&](int r, int64_t i, const int32_t* block, auto lc) {
      constexpr int L = decltype(lc)::value;
      typedef typename VecT<T, L>::type V;
      const int64_t x = rg.x[r], mx = A.lg.x_m[x];
      T* lg = rb.l(r) + i * KK * LMAX;
      const int64_t phase = block[0] % g.H, my = block[2], count = block[1];
      // logits = scale * q.k + rpb[h(lane), K-1 + a - mx, K-1 + t - my]
      const T* bias = static_cast<const T*>(A.bias) + ((phase * K2 + (K - 1 - mx)) * K2 + (K - 1 - my)) * kBiasLanes;
      V vmax = splat<V>(-infinity<T>());
      for (int a = 0; a < K; ++a)
        for (int t = 0; t < K; ++t) {
          T* p = lg + (a * K + t) * LMAX;
          V l = vload<V>(p) * scale + vload<V>(bias + (a * K2 + t) * kBiasLanes);
          vstore(p, l);
          vmax = l > vmax ? l : vmax;
        }
      V vsum = V{};
      // bfloat16 products: the weights are rounded to bfloat16, so a shorter exp does; as 2^(l log2 e
      // - max log2 e), one multiply-add (the rounding of max log2 e scales every weight of a lane
      // alike, which the normalisation takes out)
      const V neg_max_log2e = vmax * T(-1.44269504088896341);
      for (int k = 0; k < KK; ++k) {
        T* p = lg + k * LMAX;
        V e;
        if constexpr (PAIRS) e = vexp2_nonpositive_bf16<L>(vload<V>(p) * T(1.44269504088896341) + neg_max_log2e);
        else e = VecMath<T, L>::exp(vload<V>(p) - vmax);
        vstore(p, e);
        vsum += e;
      }
      const V inv = T(1) / vsum;
      WS* wq = A.weights ? static_cast<WS*>(A.weights) + ((b * g.X + x) * KK) * YH + block[0] : nullptr;
      // the K*K weight rows are YH apart, each its own stream (one line per block); fetch the next
      // block's lines for writing while this one is stored
      if (wq)
        for (int k = 0; k < KK; ++k) __builtin_prefetch(wq + k * YH + LMAX, 1);
      for (int k = 0; k < KK; ++k) {
        T* p = lg + k * LMAX;
        const V w = vload<V>(p) * inv;
        vstore(p, w);
        if (wq) store_lanes(wq + k * YH, w, count);
      }
      if constexpr (PAIRS) to_column_pairs<L>(lg, K, LMAX);
    };
    for (int r = 0; r < rg.n; ++r)
      pack_layout<T>(A.q, b * g.X + rg.x[r], rb.s(r), PAIRS ? RowLayout::channel_pairs : RowLayout::plain);
    row_pass<T, LMAX, KT, PAIRS>(g, A.lg, b, rg, kc, vc, rb, softmax);
    for (int r = 0; r < rg.n; ++r)
      for (int64_t i = 0; i < A.lg.n_blocks; ++i)
        store_block<T>(rb.o(r) + i * D * LMAX, LMAX, A.out, b, rg.x[r], g.H, A.lg.blocks + kBlockInts * i, D, T(1), g.y_of_pos);
  }
}

template <typename T, int LMAX, int KT, bool PAIRS, typename WS>
void backward_query_rows(const BackwardQueryArgs& A, TaskSource& tasks, double* drpb) {
  const Geometry& g = A.g;
  const int K = KT ? KT : (int)g.K;
  const int KK = K * K, K2 = 2 * K - 1;
  const int64_t H = g.H, YH = g.Y * g.H, D = g.D;
  RowBuffers<T> rb(A.lg.n_blocks, KK, D, LMAX, A.lg.yp);
  // dP = dO.v reduces over channels, dQ = dS.k over window columns (see forward_rows)
  RowCache<T> kc(A.k, K + kRowGroup, g.dil, PAIRS ? RowLayout::shifted_pairs : RowLayout::plain),
      vc(A.v, K + kRowGroup, g.dil, PAIRS ? RowLayout::channel_pairs : RowLayout::plain);
  const int64_t lane_table = H * K2 * K2 * kBiasLanes;
  T* lanes_acc = new T[lane_table]();  // drpb per phase and lane, flushed into drpb after every task
  for (int64_t task; (task = take_task(tasks)) >= 0;) {
    const int64_t group = task % A.lg.n_groups, b = task / A.lg.n_groups;
    const RowGroup rg = row_group(g, A.lg, group, K);
    // dS = P * (dP - sum P dP), stored for pass 2 and kept in lbuf for dQ
    auto dsoft = [&](int r, int64_t i, const int32_t* block, auto lc) {
      constexpr int L = decltype(lc)::value;
      typedef typename VecT<T, L>::type V;
      constexpr int KMAX = KT ? KT : kMaxKernelSize;
      const int64_t x = rg.x[r], mx = A.lg.x_m[x];
      T* dl = rb.l(r) + i * KK * LMAX;
      const int64_t phase = block[0] % H, my = block[2], count = block[1];
      const int64_t wbase = ((b * g.X + x) * KK) * YH + block[0];
      const WS* wq = static_cast<const WS*>(A.weights) + wbase;
      WS* dsq = static_cast<WS*>(A.grad_logits) + wbase;
      // P and dS rows are YH apart, each its own stream: fetch the next block's lines ahead
      for (int k = 0; k < KK; ++k) {
        __builtin_prefetch(wq + k * YH + LMAX);
        __builtin_prefetch(dsq + k * YH + LMAX, 1);
      }
      // P of the block; lanes past count are 0, so their dS is 0 and they add nothing to drpb
      V prob[KMAX * KMAX];
      V delta = V{};
      for (int k = 0; k < KK; ++k) {
        prob[k] = load_lanes<V>(wq + k * YH, count);
        delta += prob[k] * vload<V>(dl + k * LMAX);
      }
      T* dr = lanes_acc + ((phase * K2 + (K - 1 - mx)) * K2 + (K - 1 - my)) * kBiasLanes;
      for (int a = 0; a < K; ++a)
        for (int t = 0; t < K; ++t) {
          const int k = a * K + t;
          V ds = prob[k] * (vload<V>(dl + k * LMAX) - delta);
          vstore(dl + k * LMAX, ds);
          store_lanes(dsq + k * YH, ds, count);
          T* drp = dr + (a * K2 + t) * kBiasLanes;
          vstore(drp, vload<V>(drp) + ds);
        }
      if constexpr (PAIRS) to_column_pairs<L>(dl, K, LMAX);
    };
    for (int r = 0; r < rg.n; ++r)
      pack_layout<T>(A.grad_out, b * g.X + rg.x[r], rb.s(r), PAIRS ? RowLayout::channel_pairs : RowLayout::plain);
    row_pass<T, LMAX, KT, PAIRS>(g, A.lg, b, rg, vc, kc, rb, dsoft);
    for (int r = 0; r < rg.n; ++r)
      for (int64_t i = 0; i < A.lg.n_blocks; ++i)
        store_block<T>(rb.o(r) + i * D * LMAX, LMAX, A.grad_q, b, rg.x[r], H, A.lg.blocks + kBlockInts * i, D, (T)A.scale,
                       g.y_of_pos);
    for (int64_t p = 0; p < H; ++p)
      for (int64_t i = 0; i < K2 * K2; ++i) {
        T* src = lanes_acc + (p * K2 * K2 + i) * kBiasLanes;
        const int64_t ia = i / K2, it = i % K2;
        for (int l = 0; l < kBiasLanes; ++l) {
          if (src[l] != T(0)) drpb[(((p + l) % H) * K2 + ia) * A.rp + it] += (double)src[l];
          src[l] = T(0);
        }
      }
  }
  delete[] lanes_acc;
}

// The P and dS operands of one key block for backward_key_rows with bfloat16 products: for query
// row i (of i_lo..i_hi) and pattern entries e, e+1 (queries s and s+1, whose lanes are step apart),
// the pairs (P[e], P[e+1]) and (dS[e], dS[e+1]) over the block's lanes, so that with q and dO rows
// in shifted pairs (word at lane j = (row[j], row[j + step])) one vdpbf16ps sums both entries. A
// last odd entry is paired with 0. Built once per block, read by every channel chunk.
template <int L, typename WS>
NA_INLINE void key_block_pairs(const BackwardKeyArgs& A, int64_t b, int64_t rx, int64_t kp, int64_t i_lo, int64_t i_hi,
                               const int32_t* block, float* pairs) {
  typedef typename VecT<float, L>::type V;
  const Geometry& g = A.g;
  const int64_t K = g.K, KK = K * K, d = g.dil, step = block[4], YH = g.Y * g.H;
  const int32_t* st = A.pattern_st + 2 * A.pattern_begin[block[2]];
  const int n_st = A.pattern_begin[block[2] + 1] - A.pattern_begin[block[2]];
  const int n_pairs = (n_st + 1) / 2;
  for (int64_t i = i_lo; i <= i_hi; ++i) {
    const int64_t x = i * d + rx, a = kp - g.x_start[rx * g.Xs + i];
    const int64_t row = b * g.X + x;
    const WS* prow = static_cast<const WS*>(A.weights) + (row * KK + a * K) * YH + block[0];
    const WS* srow = static_cast<const WS*>(A.grad_logits) + (row * KK + a * K) * YH + block[0];
    float* out = pairs + (i - i_lo) * n_pairs * 2 * L;
    for (int e = 0; e < n_st; e += 2) {
      const int64_t off = st[2 * e] * step, tt = st[2 * e + 1] * YH;
      V p_hi = V{}, s_hi = V{};
      if (e + 1 < n_st) {
        const int64_t off1 = st[2 * e + 2] * step, tt1 = st[2 * e + 3] * YH;
        p_hi = load_as<V>(prow + tt1 + off1);
        s_hi = load_as<V>(srow + tt1 + off1);
      }
      vstore(out + e * L, round_to_pairs<L>(load_as<V>(prow + tt + off), p_hi));
      vstore(out + (e + 1) * L, round_to_pairs<L>(load_as<V>(srow + tt + off), s_hi));
    }
  }
}

// dK, dV of one key block (see BackwardKeyArgs) for CB channels from c0, summed in registers over
// the query rows i_lo..i_hi of residue class rx holding key row kp (sub-grid units) and the block's
// pattern; written to gk_t / gv_t [D][slot]. PAIRS: q and dO rows in shifted pairs, P and dS pairs
// from key_block_pairs, two pattern entries per product
template <typename T, int L, int CB, bool PAIRS, typename WS>
NA_INLINE void key_block_chunk(const BackwardKeyArgs& A, int64_t b, int64_t rx, int64_t kp, int64_t i_lo, int64_t i_hi,
                               const T* const* qrows, const T* const* grows, const int32_t* block, int64_t c0, T* gk_t,
                               T* gv_t, int64_t slot, const T* pairs) {
  typedef typename VecT<T, L>::type V;
  const Geometry& g = A.g;
  const int64_t K = g.K, KK = K * K, d = g.dil, step = block[4], YH = g.Y * g.H, yp = A.q.yp;
  const int32_t* st = A.pattern_st + 2 * A.pattern_begin[block[2]];
  const int n_st = A.pattern_begin[block[2] + 1] - A.pattern_begin[block[2]];
  V acc_k[CB], acc_v[CB];
  for (int j = 0; j < CB; ++j) acc_k[j] = acc_v[j] = V{};
  if constexpr (PAIRS) {
    const int n_pairs = (n_st + 1) / 2;
    for (int64_t i = i_lo; i <= i_hi; ++i) {
      const T* qrow = qrows[i - i_lo] + c0 * yp + block[0];
      const T* grow = grows[i - i_lo] + c0 * yp + block[0];
      const T* pr = pairs + (i - i_lo) * n_pairs * 2 * L;
      for (int e = 0; e < n_st; e += 2) {
        const int64_t off = st[2 * e] * step;
        const V wp = vload<V>(pr + e * L), ws = vload<V>(pr + (e + 1) * L);
        for (int j = 0; j < CB; ++j) {
          acc_v[j] = madd<true>(acc_v[j], wp, vload<V>(grow + j * yp + off));
          acc_k[j] = madd<true>(acc_k[j], ws, vload<V>(qrow + j * yp + off));
        }
      }
    }
  } else
  for (int64_t i = i_lo; i <= i_hi; ++i) {
    const int64_t x = i * d + rx, a = kp - g.x_start[rx * g.Xs + i];
    const int64_t row = b * g.X + x;
    const WS* prow = static_cast<const WS*>(A.weights) + (row * KK + a * K) * YH + block[0];
    const WS* srow = static_cast<const WS*>(A.grad_logits) + (row * KK + a * K) * YH + block[0];
    const T* qrow = qrows[i - i_lo] + c0 * yp + block[0];
    const T* grow = grows[i - i_lo] + c0 * yp + block[0];
    for (int e = 0; e < n_st; ++e) {
      const int64_t off = st[2 * e] * step, tt = st[2 * e + 1] * YH;
      const V wp = load_as<V>(prow + tt + off), ws = load_as<V>(srow + tt + off);
      for (int j = 0; j < CB; ++j) {
        acc_v[j] += wp * vload<V>(grow + j * yp + off);
        acc_k[j] += ws * vload<V>(qrow + j * yp + off);
      }
    }
  }
  for (int j = 0; j < CB; ++j) {
    vstore(gk_t + (c0 + j) * slot, acc_k[j]);
    vstore(gv_t + (c0 + j) * slot, acc_v[j]);
  }
}

template <typename T, int LMAX, bool PAIRS, typename WS>
void backward_key_rows(const BackwardKeyArgs& A, TaskSource& tasks) {
  const Geometry& g = A.g;
  const int64_t d = g.dil, D = g.D;
  // 2 * CB accumulators, two weights and a load in registers (16 below AVX-512, 32 with it)
  constexpr int CB = NA_VEC_BYTES >= 64 ? 8 : 4;
  T* gk_t = new T[D * LMAX];
  T* gv_t = new T[D * LMAX];
  // the most query rows whose windows hold one key row, read off the inverse tables: K + K/2 on
  // long axes, but up to the whole residue class when it is shorter than 2K (every query row then
  // holds the middle key rows)
  int64_t max_rows = 1;
  for (int64_t r = 0; r < d; ++r)
    for (int64_t kp = 0; kp < class_len(g.X, r, d); ++kp) {
      const int64_t n = g.x_inv_hi[r * g.Xs + kp] - g.x_inv_lo[r * g.Xs + kp] + 1;
      if (n > max_rows) max_rows = n;
    }
  const RowLayout layout = PAIRS ? RowLayout::shifted_pairs : RowLayout::plain;
  RowCache<T> qc(A.q, max_rows + 1, d, layout), gc(A.grad_out, max_rows + 1, d, layout);
  // PAIRS: the P / dS pairs of one block (key_block_pairs), n_st + 1 vectors per query row at most;
  // a pattern has up to K entries on long rows but up to the whole row on rows shorter than 2K
  int max_st = 0;
  for (int64_t n = 0; n < A.n_key_blocks; ++n) {
    const int32_t pat = A.key_blocks[kBlockInts * n + 2];
    const int n_st = A.pattern_begin[pat + 1] - A.pattern_begin[pat];
    if (n_st > max_st) max_st = n_st;
  }
  T* pairs = PAIRS ? new T[max_rows * (max_st + 1) * LMAX] : nullptr;
  const T** qrows = new const T*[max_rows];
  const T** grows = new const T*[max_rows];
  for (int64_t task; (task = take_task(tasks)) >= 0;) {
    // key rows residue class by class (task = (b * d + rx) * Xs + kp): consecutive tasks share most
    // of their query rows, which the row caches (slots by sub-grid index) then transpose once
    const int64_t kp = task % g.Xs, rx = (task / g.Xs) % d, b = task / (g.Xs * d);
    if (kp >= class_len(g.X, rx, d)) continue;
    const int64_t kx = kp * d + rx;
    const int64_t i_lo = g.x_inv_lo[rx * g.Xs + kp], i_hi = g.x_inv_hi[rx * g.Xs + kp];
    for (int64_t i = i_lo; i <= i_hi; ++i) {
      qrows[i - i_lo] = qc.row(b, i * d + rx);
      grows[i - i_lo] = gc.row(b, i * d + rx);
    }
    for (int64_t n = 0; n < A.n_key_blocks; ++n) {
      const int32_t* block = A.key_blocks + kBlockInts * n;
      {
        // P and dS lines of the next block (whose lanes follow this block's): one stream per
        // query row and window column, fetched while this block is summed
        const int32_t* st = A.pattern_st + 2 * A.pattern_begin[block[2]];
        const int n_st = A.pattern_begin[block[2] + 1] - A.pattern_begin[block[2]];
        const int64_t KK = g.K * g.K, YH = g.Y * g.H, step = block[4];
        for (int64_t i = i_lo; i <= i_hi; ++i) {
          const int64_t row = b * g.X + i * d + rx, a = kp - g.x_start[rx * g.Xs + i];
          const int64_t base = (row * KK + a * g.K) * YH + block[0] + LMAX;
          for (int e = 0; e < n_st; ++e) {
            const int64_t off = base + st[2 * e + 1] * YH + st[2 * e] * step;
            __builtin_prefetch(static_cast<const WS*>(A.weights) + off);
            __builtin_prefetch(static_cast<const WS*>(A.grad_logits) + off);
          }
        }
      }
      with_lanes<LMAX>(block[3], [&](auto lc) {
        constexpr int L = decltype(lc)::value;
        int64_t c0 = 0;
        if constexpr (PAIRS) key_block_pairs<L, WS>(A, b, rx, kp, i_lo, i_hi, block, pairs);
        for (; c0 + CB <= D; c0 += CB)
          key_block_chunk<T, L, CB, PAIRS, WS>(A, b, rx, kp, i_lo, i_hi, qrows, grows, block, c0, gk_t, gv_t, LMAX, pairs);
        for (; c0 < D; ++c0)
          key_block_chunk<T, L, 1, PAIRS, WS>(A, b, rx, kp, i_lo, i_hi, qrows, grows, block, c0, gk_t, gv_t, LMAX, pairs);
      });
      store_block<T>(gk_t, LMAX, A.grad_k, b, kx, g.H, block, D, (T)A.scale, g.y_of_pos);
      store_block<T>(gv_t, LMAX, A.grad_v, b, kx, g.H, block, D, T(1), g.y_of_pos);
    }
  }
  delete[] gk_t;
  delete[] gv_t;
  delete[] pairs;
  delete[] qrows;
  delete[] grows;
}

// Backward pass 2 per key (see backward_key_rows for the row path), for dilated float32 maps and
// dilated bfloat16 maps whose chunks are narrower than a vector (Problem::key_rows in na2d.cpp
// picks): summing over the key's inverse
// neighbourhood on its residue-class sub-grid, vectorised over head_dim, reading q and grad_out in
// place. Tasks are key rows, residue class by class (consecutive tasks share most of their query
// rows): task = (b * d + rx) * Xs + p for key row p * d + rx, every key and head of it. With few
// heads and a step below one vector, the rows of backward_key_rows run mostly half-empty vectors;
// this path was measured faster there.
// dK, dV for NV*WD channels starting at c0 of one key, summed over the queries whose window holds it
template <typename T, typename S, int WD, int NV>
NA_INLINE void key_chunk(const BackwardKeyArgs& A, const TaskIndex& ti, int64_t kp, int64_t ks, int64_t i_lo,
                         int64_t i_hi, int64_t j_lo, int64_t j_hi, int K, int64_t c0, S* gk, S* gv) {
  typedef typename VecT<T, WD>::type VD;
  const Geometry& g = A.g;
  const int64_t d = g.dil;
  const S* weights = static_cast<const S*>(A.weights);
  const S* grad_logits = static_cast<const S*>(A.grad_logits);
  const int KK = K * K;
  VD acc_k[NV], acc_v[NV];
  for (int n = 0; n < NV; ++n) acc_k[n] = acc_v[n] = VD{};
  for (int64_t i = i_lo; i <= i_hi; ++i) {
    const int64_t a = kp - g.x_start[ti.rx * g.Xs + i];
    const int64_t x = i * d + ti.rx;
    const int64_t row_idx = (ti.b * g.X + x) * KK;
    for (int64_t j = j_lo; j <= j_hi; ++j) {
      const int64_t t = ks - g.y_start[ti.ry * g.Ys + j];
      const int64_t y = j * d + ti.ry;
      const int64_t widx = ((row_idx + a * K + t) * g.Y + g.pos_of_y[y]) * g.H + ti.h;
      const T ws = to_compute(grad_logits[widx]), wp = to_compute(weights[widx]);
      const S* qp = at<S>(A.q.src, ti.b, x, y, ti.h) + c0;
      const S* gp = at<S>(A.grad_out.src, ti.b, x, y, ti.h) + c0;
      for (int n = 0; n < NV; ++n) {
        acc_k[n] += ws * load_as<VD>(qp + n * WD);
        acc_v[n] += wp * load_as<VD>(gp + n * WD);
      }
    }
  }
  const T scale = (T)A.scale;
  for (int n = 0; n < NV; ++n) {
    store_as(gk + c0 + n * WD, acc_k[n] * scale);
    store_as(gv + c0 + n * WD, acc_v[n]);
  }
}

// S: storage type of q, dO, dK, dV (T, or bfloat16 for T = float)
template <typename T, typename S>
void backward_key_gather_as(const BackwardKeyArgs& A, TaskSource& tasks) {
  constexpr int WD = NA_VEC_BYTES / sizeof(T);
  const Geometry& g = A.g;
  const int K = (int)g.K;
  const int KK = K * K;
  const int64_t d = g.dil, D = g.D;
  const S* weights = static_cast<const S*>(A.weights);  // saved weights and dS are stored like q
  const S* grad_logits = static_cast<const S*>(A.grad_logits);
  for (int64_t task; (task = take_task(tasks)) >= 0;) {
    TaskIndex ti;
    const int64_t kp = task % g.Xs;
    ti.rx = (task / g.Xs) % d;
    ti.b = task / (g.Xs * d);
    if (kp >= class_len(g.X, ti.rx, d)) continue;
    const int64_t kx = kp * d + ti.rx;
    const int64_t i_lo = g.x_inv_lo[ti.rx * g.Xs + kp], i_hi = g.x_inv_hi[ti.rx * g.Xs + kp];
    // Keys of `span` neighbouring residue classes at a time, position by position: the queries of
    // keys ky and ky + 1 (classes ry, ry + 1) are neighbours y, y + 1, whose P and dS entries (H
    // floats each) share a cache line when H < 16, so each line fetched serves up to `span` keys.
    // Class by class, each key's 2 K^2 lines were fetched for H entries and evicted before the
    // next class came back to them (200x304, H 2, d 8: pass 2 took ~3x the dilation-1 row path);
    // all classes at once, the q / dO rows of a task outgrow L2 when H is large.
    const int64_t span = g.H >= 16 ? 1 : 16 / g.H;
    for (int64_t ry0 = 0; ry0 < d; ry0 += span)
    for (int64_t ks = 0; ks < g.Ys; ++ks)
    for (ti.ry = ry0; ti.ry < ry0 + span && ti.ry < d; ++ti.ry) {
      const int64_t ky = ks * d + ti.ry;
      if (ky >= g.Y) break;
      const int64_t j_lo = g.y_inv_lo[ti.ry * g.Ys + ks], j_hi = g.y_inv_hi[ti.ry * g.Ys + ks];
      // heads innermost: they read the same lines of the saved weights and dS
      for (ti.h = 0; ti.h < g.H; ++ti.h) {
      S* gk = at_mut<S>(A.grad_k, ti.b, kx, ky, ti.h);
      S* gv = at_mut<S>(A.grad_v, ti.b, kx, ky, ti.h);
      int64_t c0 = 0;
      for (; c0 + 2 * WD <= D; c0 += 2 * WD)
        key_chunk<T, S, WD, 2>(A, ti, kp, ks, i_lo, i_hi, j_lo, j_hi, K, c0, gk, gv);
      for (; c0 + WD <= D; c0 += WD) key_chunk<T, S, WD, 1>(A, ti, kp, ks, i_lo, i_hi, j_lo, j_hi, K, c0, gk, gv);
      if (c0 < D) {
        T rk[WD], rv[WD];  // the remaining (< WD) channels, summed in the compute type
        for (int64_t c = c0; c < D; ++c) rk[c - c0] = rv[c - c0] = 0;
        for (int64_t i = i_lo; i <= i_hi; ++i) {
          const int64_t a = kp - g.x_start[ti.rx * g.Xs + i];
          const int64_t x = i * d + ti.rx;
          for (int64_t j = j_lo; j <= j_hi; ++j) {
            const int64_t t = ks - g.y_start[ti.ry * g.Ys + j];
            const int64_t y = j * d + ti.ry;
            const int64_t widx = ((((ti.b * g.X + x) * KK) + a * K + t) * g.Y + g.pos_of_y[y]) * g.H + ti.h;
            const S* qp = at<S>(A.q.src, ti.b, x, y, ti.h);
            const S* gp = at<S>(A.grad_out.src, ti.b, x, y, ti.h);
            for (int64_t c = c0; c < D; ++c) {
              rk[c - c0] += to_compute(grad_logits[widx]) * to_compute(qp[c]) * (T)A.scale;
              rv[c - c0] += to_compute(weights[widx]) * to_compute(gp[c]);
            }
          }
        }
        for (int64_t c = c0; c < D; ++c) {
          put(gk + c, rk[c - c0]);
          put(gv + c, rv[c - c0]);
        }
      }
      }
    }
  }
}

template <typename T>
void backward_key_gather(const BackwardKeyArgs& A, TaskSource& tasks) {
  if constexpr (sizeof(T) == 4)
    if (A.q.src.elem == kElemBF16) return backward_key_gather_as<T, Bf16>(A, tasks);
  backward_key_gather_as<T, T>(A, tasks);
}

// Exact (erf) GELU backward of the memory-lean MLP (dinat_backbone/lean.py), one pass over h and
// the gradient g of gelu(h): gelu(h) (the input of the next Linear, for its weight gradient) and
// dL/dh = g * (Phi(h) + h * phi(h)), with phi(h) = e / sqrt(2 pi), e = exp(-h^2 / 2), and
// Phi(h) = erfc(z) / 2 (h < 0) or 1 - erfc(z) / 2, z = |h| / sqrt 2, so the tail Phi(h), h << 0,
// keeps its digits (no 1 + erf cancellation). erfc(z) = t * Q(t) * e with t = 1 / (1 + z / 2) and
// Q a degree-8 fit of erfcx(z) / t on t in [0.1, 1] (relative error 2e-7 in float32; z > 18 has
// e = 0 in float32 anyway): one exp serves erfc and phi. Float32 arithmetic; S the storage type.
template <int W, typename S>
NA_INLINE void gelu_backward_vec(const S* g_in, const S* h_in, S* act_out, S* grad_out, int64_t count) {
  typedef typename VecT<float, W>::type V;
  const V h = load_lanes<V>(h_in, count), g = load_lanes<V>(g_in, count);
  const V z = (h < 0 ? -h : h) * 0.70710678118654752f;
  const V t = 1.0f / (1.0f + 0.5f * z);
  V q = splat<V>(-0.05792243033647537f);
  q = q * t + 0.27982059121131897f;
  q = q * t - 0.4790496528148651f;
  q = q * t + 0.27061253786087036f;
  q = q * t - 0.022716132923960686f;
  q = q * t + 0.20151783525943756f;
  q = q * t + 0.2432871162891388f;
  q = q * t + 0.28236377239227295f;
  q = q * t + 0.28208640217781067f;
  const V e = vexp_nonpositive<W>(-0.5f * h * h);
  const V half_erfc = 0.5f * t * q * e;
  const V cdf = h < 0 ? half_erfc : 1.0f - half_erfc;
  store_lanes(act_out, h * cdf, count);
  store_lanes(grad_out, g * (cdf + h * e * 0.39894228040143268f), count);
}

template <typename S>
void gelu_backward_range(const S* g, const S* h, S* act, S* grad_h, int64_t begin, int64_t end) {
  constexpr int W = NA_VEC_BYTES / 4;
  int64_t i = begin;
  for (; i + W <= end; i += W) gelu_backward_vec<W>(g + i, h + i, act + i, grad_h + i, W);
  if (i < end) gelu_backward_vec<W>(g + i, h + i, act + i, grad_h + i, end - i);
}

}  // namespace

// kernel size as a template argument for the common sizes (loops unrolled, accumulators in
// registers); others run the generic instantiation
#define NA_DISPATCH_K(FN, T, LMAX, PAIRS, WS, ...)              \
  switch (a.g.K) {                                              \
    case 3: FN<T, LMAX, 3, PAIRS, WS>(__VA_ARGS__); break;      \
    case 5: FN<T, LMAX, 5, PAIRS, WS>(__VA_ARGS__); break;      \
    case 7: FN<T, LMAX, 7, PAIRS, WS>(__VA_ARGS__); break;      \
    case 9: FN<T, LMAX, 9, PAIRS, WS>(__VA_ARGS__); break;      \
    case 11: FN<T, LMAX, 11, PAIRS, WS>(__VA_ARGS__); break;    \
    case 13: FN<T, LMAX, 13, PAIRS, WS>(__VA_ARGS__); break;    \
    default: FN<T, LMAX, 0, PAIRS, WS>(__VA_ARGS__); break;     \
  }

// the entry points declared by DINAT_DECLARE_ISA in na2d_kernel.h
static constexpr int kLanes = NA_VEC_BYTES / 4;  // widest query block (float lanes of one vector)

// the storage type of the saved weights and dS for tensors stored as elem (every tensor of one call
// has the same storage type): bfloat16 for bfloat16 tensors, else float (see na2d_kernel.h);
// calls f(WS{})
template <class F>
NA_INLINE void with_weights_storage(int32_t elem, F&& f) {
  if (elem == kElemBF16) f(Bf16{});
  else f(float{});
}

// float32 and, through conversions on load and store, bfloat16 tensors
void forward_f32(const ForwardArgs& a, TaskSource& tasks) {
  with_weights_storage(a.q.src.elem, [&](auto ws) { NA_DISPATCH_K(forward_rows, float, kLanes, false, decltype(ws), a, tasks) });
}
void backward_query_f32(const BackwardQueryArgs& a, TaskSource& tasks, double* drpb) {
  with_weights_storage(a.k.src.elem, [&](auto ws) {
    NA_DISPATCH_K(backward_query_rows, float, kLanes, false, decltype(ws), a, tasks, drpb)
  });
}
#if NA_BF16_ENTRY
// bfloat16 tensors with bfloat16 products (vdpbf16ps) for both attention products (conversions
// where the unit was built without them, never selected there)
void forward_bf16(const ForwardArgs& a, TaskSource& tasks) {
  NA_DISPATCH_K(forward_rows, float, kLanes, NA_BF16_DOT != 0, Bf16, a, tasks)
}
void backward_query_bf16(const BackwardQueryArgs& a, TaskSource& tasks, double* drpb) {
  NA_DISPATCH_K(backward_query_rows, float, kLanes, NA_BF16_DOT != 0, Bf16, a, tasks, drpb)
}
void backward_key_bf16(const BackwardKeyArgs& a, TaskSource& tasks) {
  backward_key_rows<float, kLanes, NA_BF16_DOT != 0, Bf16>(a, tasks);
}
#endif
void backward_key_f32(const BackwardKeyArgs& a, TaskSource& tasks) {
  with_weights_storage(a.q.src.elem, [&](auto ws) { backward_key_rows<float, kLanes, false, decltype(ws)>(a, tasks); });
}
void backward_key_gather_f32(const BackwardKeyArgs& a, TaskSource& tasks) { backward_key_gather<float>(a, tasks); }

// the training MLP's GELU backward on bfloat16 tensors of n elements (elements begin..end)
void gelu_backward_bf16(const void* grad, const void* h, void* act, void* grad_h, int64_t begin, int64_t end) {
  gelu_backward_range(static_cast<const Bf16*>(grad), static_cast<const Bf16*>(h), static_cast<Bf16*>(act),
                      static_cast<Bf16*>(grad_h), begin, end);
}
void gelu_backward_f32(const void* grad, const void* h, void* act, void* grad_h, int64_t begin, int64_t end) {
  gelu_backward_range(static_cast<const float*>(grad), static_cast<const float*>(h), static_cast<float*>(act),
                      static_cast<float*>(grad_h), begin, end);
}

#if NA_WITH_F64
// float64 is for accuracy checks, not speed: one instantiation with a run-time kernel size
void forward_f64(const ForwardArgs& a, TaskSource& tasks) { forward_rows<double, 4, 0, false, double>(a, tasks); }
void backward_query_f64(const BackwardQueryArgs& a, TaskSource& tasks, double* drpb) {
  backward_query_rows<double, 4, 0, false, double>(a, tasks, drpb);
}
void backward_key_f64(const BackwardKeyArgs& a, TaskSource& tasks) {
  backward_key_rows<double, 4, false, double>(a, tasks);
}
void backward_key_gather_f64(const BackwardKeyArgs& a, TaskSource& tasks) { backward_key_gather<double>(a, tasks); }
#endif

}  // namespace NA_ISA
}  // namespace dinat
