// LayerNorm over the last axis of [rows, C] tensors (the DiNAT block's norm1 / norm2 on its
// [B, X, Y, C] residual stream), forward optionally after the residual add, and backward.
//
// Included by each kernel_<isa>.cpp after na2d_kernel_impl.h (its vector helpers, same target).
// Why a kernel of our own: ATen's bfloat16 LayerNorm on CPU runs at about a tenth of the memory
// rate on DiNAT's short rows (C = 64 at stage 1: 2.7 ms for a 60800 x 64 map that a copy moves in
// 0.3 ms), and the block's residual add before norm2 is one more pass over the map.
//
// Per row, float32 arithmetic whatever the storage type S: s = x (+ residual, rounded to S and
// stored: the next residual add reads it), mean = sum(s) / C, var = sum((s - mean)^2) / C (two
// passes over the row, which sits in L1), rstd = 1 / sqrt(var + eps),
// out = (s - mean) * rstd * weight + bias, rounded to S. Backward, with xhat = (s - mean) * rstd and
// gy = grad * weight:
//   grad_input = rstd * (gy - mean(gy) - xhat * mean(gy * xhat)),
//   grad_weight += grad * xhat, grad_bias += grad (summed over rows by the caller's chunks).

namespace dinat {
namespace NA_ISA {
namespace {

// lanes [0, n) set: the padding lanes of a row's last vector (load_lanes fills them with zeros)
template <int W>
NA_INLINE typename IntVecT<W>::type first_lanes(int64_t n) {
  typename IntVecT<W>::type lane;
  for (int i = 0; i < W; ++i) lane[i] = i;
  return lane < (int32_t)n;
}

// lanes of the vector at column c of a row of C: W, or the remainder for the last one (kFull: C a
// multiple of W, every vector full)
template <int W, bool kFull>
NA_INLINE int64_t vector_lanes(int64_t C, int64_t c) {
  return kFull || C - c >= W ? W : C - c;
}

// sum of the lanes by halving (log2 W dependent adds, not the W - 1 of a lane-by-lane sum: the
// two sums per row are the latency chain of a short row)
template <int W>
NA_INLINE float hsum_tree(typename VecT<float, W>::type v) {
  if constexpr (W >= 8) {  // halves by memcpy: one extract each (no __builtin_shufflevector before GCC 12)
    typedef typename VecT<float, W / 2>::type Half;
    Half lo, hi;
    __builtin_memcpy(&lo, &v, sizeof(Half));
    __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
    return hsum_tree<W / 2>(lo + hi);
  } else {
    return hsum<float, W>(v);
  }
}

// bfloat16 row loads and stores of the LayerNorm kernel: one widening load (GCC splits the vector
// extension's 16 x u16 -> u32 conversion into two halves and an insert), and on AVX512_BF16 one
// rounding instruction (vcvtneps2bf16: round to nearest even like torch; NaN lanes set to torch's
// 0x7fc0; unlike torch it flushes results below 2^-126 in magnitude to zero, immaterial for a
// normalised output)
template <class V>
NA_INLINE V ln_load(const float* p, int64_t n) { return load_lanes<V>(p, n); }
template <class V>
NA_INLINE V ln_load(const Bf16* p, int64_t n) {
#if NA_BF16_DOT
  if constexpr (sizeof(V) == 64) {
    const __mmask16 k = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    typedef typename Bf16VecT<16>::word U;  // (maskz: the unmasked intrinsics trip GCC 12's -Wmaybe-uninitialized)
    return (V)((U)_mm512_maskz_cvtepu16_epi32(__mmask16(0xffff), _mm256_maskz_loadu_epi16(k, p)) << 16);
  }
#endif
  return load_lanes<V>(p, n);
}
template <class V>
NA_INLINE void ln_store(float* p, V v, int64_t n) { store_lanes(p, v, n); }
template <class V>
NA_INLINE void ln_store(Bf16* p, V v, int64_t n) {
#if NA_BF16_DOT
  if constexpr (sizeof(V) == 64) {
    const __mmask16 k = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    const __m512 f = (__m512)v;
    __m256i r = (__m256i)_mm512_cvtneps_pbh(f);
    r = _mm256_mask_mov_epi16(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm256_set1_epi16(0x7fc0));
    _mm256_mask_storeu_epi16(p, k, r);
    return;
  }
#endif
  store_lanes(p, v, n);
}

// R rows at a time, interleaved: a row's work is one dependent chain (sum -> mean -> squares ->
// rstd -> outputs, two horizontal sums, a sqrt and a division) that out-of-order execution
// overlaps only across the few rows its window holds; independent rows side by side fill it (a
// 60800 x 64 map in bfloat16: 3.1 ms a row at a time, one thread). kFull: C a multiple of W
// (every vector full; the usual channel counts), else the last vector of a row has C % W lanes.
template <int W, typename S, bool kFull, int R>
NA_INLINE void layer_norm_group(const LayerNormArgs& a, int64_t row0) {
  typedef typename VecT<float, W>::type V;
  const int64_t C = a.C;
  const float inv_c = 1.0f / float(C);
  const S* src[R];
  for (int r = 0; r < R; ++r) src[r] = static_cast<const S*>(a.input) + (row0 + r) * C;
  if (a.residual) {
    for (int r = 0; r < R; ++r) {
      const S* res = static_cast<const S*>(a.residual) + (row0 + r) * C;
      S* sum = static_cast<S*>(a.sum) + (row0 + r) * C;
      for (int64_t c = 0; c < C; c += W) {
        const int64_t n = vector_lanes<W, kFull>(C, c);
        ln_store(sum + c, ln_load<V>(src[r] + c, n) + ln_load<V>(res + c, n), n);
      }
      src[r] = sum;  // the statistics of the sum as stored (rounded to S), as LayerNorm(x + r) sees it
    }
  }
  V acc[R];
  for (int r = 0; r < R; ++r) acc[r] = V{};
  for (int64_t c = 0; c < C; c += W) {
    const int64_t n = vector_lanes<W, kFull>(C, c);
    for (int r = 0; r < R; ++r) acc[r] += ln_load<V>(src[r] + c, n);
  }
  float mean[R];
  for (int r = 0; r < R; ++r) {
    mean[r] = hsum_tree<W>(acc[r]) * inv_c;
    acc[r] = V{};
  }
  for (int64_t c = 0; c < C; c += W) {
    const int64_t n = vector_lanes<W, kFull>(C, c);
    for (int r = 0; r < R; ++r) {
      V d = ln_load<V>(src[r] + c, n) - mean[r];
      if (!kFull && n < W) d = first_lanes<W>(n) ? d : V{};  // padding lanes (x = 0) would add mean^2
      acc[r] += d * d;
    }
  }
  float rstd[R];
  for (int r = 0; r < R; ++r) rstd[r] = 1.0f / __builtin_sqrtf(hsum_tree<W>(acc[r]) * inv_c + a.eps);
  for (int64_t c = 0; c < C; c += W) {
    const int64_t n = vector_lanes<W, kFull>(C, c);
    const V w = load_lanes<V>(a.weight + c, n), b = load_lanes<V>(a.bias + c, n);
    for (int r = 0; r < R; ++r)
      ln_store(static_cast<S*>(a.out) + (row0 + r) * C + c, (ln_load<V>(src[r] + c, n) - mean[r]) * rstd[r] * w + b, n);
  }
  if (a.mean) {
    for (int r = 0; r < R; ++r) {
      a.mean[row0 + r] = mean[r];
      a.rstd[row0 + r] = rstd[r];
    }
  }
}

// rows side by side: 8 for short rows (C <= 8 W: stage 1 and 2 of DiNAT-T in bfloat16, 60800 x 64:
// 1.2 ms with 4, 1.05 ms with 8, one thread), 4 for longer ones (8 spill: C = 256 twice as slow)
template <int W, typename S, bool kFull>
void layer_norm_rows(const LayerNormArgs& a, int64_t begin, int64_t end) {
  int64_t row = begin;
  if (a.C <= 8 * W)
    for (; row + 8 <= end; row += 8) layer_norm_group<W, S, kFull, 8>(a, row);
  for (; row + 4 <= end; row += 4) layer_norm_group<W, S, kFull, 4>(a, row);
  for (; row < end; ++row) layer_norm_group<W, S, kFull, 1>(a, row);
}

// Backward, R rows side by side like the forward; the rows' grad_weight / grad_bias terms are
// summed in registers and added to the chunk's accumulators once per group.
template <int W, typename S, bool kFull, int R>
NA_INLINE void layer_norm_backward_group(const LayerNormBackwardArgs& a, int64_t row0, float* grad_weight,
                                         float* grad_bias) {
  typedef typename VecT<float, W>::type V;
  const int64_t C = a.C;
  const float inv_c = 1.0f / float(C);
  const S* x[R];
  const S* g[R];
  float mean[R], rstd[R];
  for (int r = 0; r < R; ++r) {
    x[r] = static_cast<const S*>(a.input) + (row0 + r) * C;
    g[r] = static_cast<const S*>(a.grad_out) + (row0 + r) * C;
    mean[r] = a.mean[row0 + r];
    rstd[r] = a.rstd[row0 + r];
  }
  V sum_gy[R], sum_gy_xhat[R];
  for (int r = 0; r < R; ++r) sum_gy[r] = sum_gy_xhat[r] = V{};
  for (int64_t c = 0; c < C; c += W) {
    const int64_t n = vector_lanes<W, kFull>(C, c);
    const V w = load_lanes<V>(a.weight + c, n);
    V gw = V{}, gb = V{};
    for (int r = 0; r < R; ++r) {
      const V gv = ln_load<V>(g[r] + c, n);
      const V xhat = (ln_load<V>(x[r] + c, n) - mean[r]) * rstd[r];  // padding lanes: grad 0, add nothing
      const V gy = gv * w;
      sum_gy[r] += gy;
      sum_gy_xhat[r] += gy * xhat;
      gw += gv * xhat;
      gb += gv;
    }
    if (grad_weight) store_lanes(grad_weight + c, load_lanes<V>(grad_weight + c, n) + gw, n);
    if (grad_bias) store_lanes(grad_bias + c, load_lanes<V>(grad_bias + c, n) + gb, n);
  }
  if (!a.grad_input) return;
  float mean_gy[R], mean_gy_xhat[R];
  for (int r = 0; r < R; ++r) {
    mean_gy[r] = hsum_tree<W>(sum_gy[r]) * inv_c;
    mean_gy_xhat[r] = hsum_tree<W>(sum_gy_xhat[r]) * inv_c;
  }
  for (int64_t c = 0; c < C; c += W) {
    const int64_t n = vector_lanes<W, kFull>(C, c);
    const V w = load_lanes<V>(a.weight + c, n);
    for (int r = 0; r < R; ++r) {
      const V xhat = (ln_load<V>(x[r] + c, n) - mean[r]) * rstd[r];
      const V gy = ln_load<V>(g[r] + c, n) * w;
      ln_store(static_cast<S*>(a.grad_input) + (row0 + r) * C + c, rstd[r] * (gy - mean_gy[r] - xhat * mean_gy_xhat[r]), n);
    }
  }
}

template <int W, typename S, bool kFull>
void layer_norm_backward_rows(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* grad_weight,
                              float* grad_bias) {
  int64_t row = begin;
  for (; row + 4 <= end; row += 4) layer_norm_backward_group<W, S, kFull, 4>(a, row, grad_weight, grad_bias);
  for (; row < end; ++row) layer_norm_backward_group<W, S, kFull, 1>(a, row, grad_weight, grad_bias);
}

}  // namespace

namespace {
constexpr int kNormLanes = NA_VEC_BYTES / 4;
template <typename S>
void layer_norm_entry(const LayerNormArgs& a, int64_t begin, int64_t end) {
  if (a.C % kNormLanes == 0) layer_norm_rows<kNormLanes, S, true>(a, begin, end);
  else layer_norm_rows<kNormLanes, S, false>(a, begin, end);
}
template <typename S>
void layer_norm_backward_entry(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* gw, float* gb) {
  if (a.C % kNormLanes == 0) layer_norm_backward_rows<kNormLanes, S, true>(a, begin, end, gw, gb);
  else layer_norm_backward_rows<kNormLanes, S, false>(a, begin, end, gw, gb);
}
}  // namespace

void layer_norm_bf16(const LayerNormArgs& a, int64_t begin, int64_t end) { layer_norm_entry<Bf16>(a, begin, end); }
void layer_norm_f32(const LayerNormArgs& a, int64_t begin, int64_t end) { layer_norm_entry<float>(a, begin, end); }
void layer_norm_backward_bf16(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* grad_weight,
                              float* grad_bias) {
  layer_norm_backward_entry<Bf16>(a, begin, end, grad_weight, grad_bias);
}
void layer_norm_backward_f32(const LayerNormBackwardArgs& a, int64_t begin, int64_t end, float* grad_weight,
                             float* grad_bias) {
  layer_norm_backward_entry<float>(a, begin, end, grad_weight, grad_bias);
}

}  // namespace NA_ISA
}  // namespace dinat
