// torch-facing side of the compiled CPU neighbourhood-attention kernel.
//
// Registers torch.ops.dinat.na2d_forward / na2d_backward (CPU), prepares inputs (dtype, strides,
// the padded bias table, the per-axis window tables, the query / key block plans) and runs
// the kernel of the best instruction set the CPU supports over OpenMP (at::parallel_for).
// The Python side (dinat_backbone/ops.py) adds the fake (meta) implementations and autograd.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <map>
#include <vector>

#include "na2d_kernel.h"

namespace dinat {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------------
// Instruction-set selection
// ---------------------------------------------------------------------------------------------
// avx512bf16: the avx512 kernels plus bfloat16 products for bfloat16 inputs
enum class Isa { generic = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3 };
constexpr Isa kAllIsas[] = {Isa::generic, Isa::avx2, Isa::avx512, Isa::avx512bf16};

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
// AVX512_BF16: CPUID leaf 7 sub-leaf 1, EAX bit 5 (asked directly: not every compiler's
// __builtin_cpu_supports knows the name)
bool cpu_has_avx512_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 1, eax, ebx, ecx, edx);
  return (eax >> 5) & 1u;
}
#endif

Isa best_supported_isa() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
    return cpu_has_avx512_bf16() ? Isa::avx512bf16 : Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::generic;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512bf16: return "avx512bf16";
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

// DINAT_CPU_ISA=generic|avx2|avx512|avx512bf16 caps the instruction set (for testing the other code
// paths; avx512 on a CPU with AVX512_BF16 runs bfloat16 inputs through the conversion path)
Isa initial_isa() {
  Isa best = best_supported_isa();
  const char* env = std::getenv("DINAT_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  for (Isa cand : kAllIsas)
    if (std::strcmp(env, isa_name(cand)) == 0) return static_cast<int>(cand) <= static_cast<int>(best) ? cand : best;
  return best;
}

std::atomic<int>& active_isa() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

// backward pass 2: 0 = chosen per problem (Problem::key_rows), 1 = key rows, 2 = per-key gather
std::atomic<int>& key_pass() {
  static std::atomic<int> pass{0};
  return pass;
}

using GeluBackwardFn = void (*)(const void*, const void*, void*, void*, int64_t, int64_t);
using LayerNormFn = void (*)(const LayerNormArgs&, int64_t, int64_t);
using LayerNormBackwardFn = void (*)(const LayerNormBackwardArgs&, int64_t, int64_t, float*, float*);

struct Kernels {
  int lanes;  // widest query block of forward / backward pass 1
  void (*forward)(const ForwardArgs&, TaskSource&);
  void (*backward_query)(const BackwardQueryArgs&, TaskSource&, double*);
  void (*backward_key)(const BackwardKeyArgs&, TaskSource&);         // key rows
  void (*backward_key_gather)(const BackwardKeyArgs&, TaskSource&);  // per key
  GeluBackwardFn gelu_backward;  // the lean MLP's GELU backward (none for float64)
  LayerNormFn layer_norm;        // the block's LayerNorm (layer_norm_impl.h; none for float64)
  LayerNormBackwardFn layer_norm_backward;
  bool dilated_rows = false;     // dilated maps take the key rows too (see Problem::key_rows)
};

// storage: the dtype the tensors are handed to the kernels in (float64, float32, or bfloat16 read
// and written as such by the float32 kernels)
Kernels kernels_for(at::ScalarType storage) {
  if (storage == at::kDouble)
    return {4, generic::forward_f64, generic::backward_query_f64, generic::backward_key_f64, generic::backward_key_gather_f64,
            nullptr, nullptr, nullptr};
  const bool bf16 = storage == at::kBFloat16;
// the block's elementwise kernels of one instruction set, for bfloat16 or float32 storage
#define DINAT_BLOCK_KERNELS(isa)                                                   \
  bf16 ? isa::gelu_backward_bf16 : isa::gelu_backward_f32,                         \
      bf16 ? isa::layer_norm_bf16 : isa::layer_norm_f32,                           \
      bf16 ? isa::layer_norm_backward_bf16 : isa::layer_norm_backward_f32
  switch (static_cast<Isa>(active_isa().load())) {
    case Isa::avx512bf16:
      if (bf16)
        return {16, avx512bf16::forward_bf16, avx512bf16::backward_query_bf16, avx512bf16::backward_key_bf16,
                avx512bf16::backward_key_gather_f32, DINAT_BLOCK_KERNELS(avx512bf16), true};
      return {16, avx512bf16::forward_f32, avx512bf16::backward_query_f32, avx512bf16::backward_key_f32,
              avx512bf16::backward_key_gather_f32, DINAT_BLOCK_KERNELS(avx512bf16)};
    case Isa::avx512:
      return {16, avx512::forward_f32, avx512::backward_query_f32, avx512::backward_key_f32, avx512::backward_key_gather_f32,
              DINAT_BLOCK_KERNELS(avx512)};
    case Isa::avx2:
      return {8, avx2::forward_f32, avx2::backward_query_f32, avx2::backward_key_f32, avx2::backward_key_gather_f32,
              DINAT_BLOCK_KERNELS(avx2)};
    default:
      return {4, generic::forward_f32, generic::backward_query_f32, generic::backward_key_f32, generic::backward_key_gather_f32,
              DINAT_BLOCK_KERNELS(generic)};
  }
#undef DINAT_BLOCK_KERNELS
}

// ---------------------------------------------------------------------------------------------
// Input preparation
// ---------------------------------------------------------------------------------------------
void check_qkv(const Tensor& t, const char* name, const Tensor& like) {
  TORCH_CHECK(t.dim() == 5, "dinat::na2d: ", name, " must be [batch, X, Y, heads, head_dim], got ", t.sizes());
  TORCH_CHECK(t.sizes() == like.sizes(), "dinat::na2d: ", name, " has shape ", t.sizes(), ", expected ", like.sizes());
  TORCH_CHECK(t.device().is_cpu(), "dinat::na2d: the compiled kernel runs on CPU tensors; ", name, " is on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble || t.scalar_type() == at::kBFloat16 ||
                  t.scalar_type() == at::kHalf,
              "dinat::na2d: ", name, " has dtype ", t.scalar_type(), "; supported: float32, float64, bfloat16, float16");
}

at::ScalarType compute_dtype_of(const Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// The dtype the kernels get the tensors in: bfloat16 as it is when all of them are bfloat16 (the
// float32 kernels convert on load and store, the avx512bf16 ones multiply in bfloat16); otherwise
// the compute dtype (float16 and mixed dtypes are converted to float32 copies first).
at::ScalarType storage_dtype_of(std::initializer_list<const Tensor*> tensors) {
  bool all_bf16 = true;
  for (const Tensor* t : tensors) all_bf16 = all_bf16 && t->scalar_type() == at::kBFloat16;
  return all_bf16 ? at::kBFloat16 : compute_dtype_of(**tensors.begin());
}

// The saved softmax weights (and backward's dS) are stored in bfloat16 when the tensors are: they
// are 49 values per query and head at K = 7 (q, k, v hold head_dim), and reading and writing them
// in float32 was the largest memory traffic of a bfloat16 backward; otherwise the compute dtype.
// The bfloat16 products round them to bfloat16 anyway; softmax and dS are computed in float32.
at::ScalarType weights_dtype(at::ScalarType storage, at::ScalarType compute) {
  return storage == at::kBFloat16 ? at::kBFloat16 : compute;
}

// storage dtype, head_dim contiguous; any other strides are used as they are
Tensor prepare(const Tensor& t, at::ScalarType dtype) {
  Tensor out = t.to(dtype);
  if (out.stride(4) != 1 && out.size(4) > 1) out = out.contiguous();
  return out;
}

int32_t elem_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kElemF32;
    case at::kDouble: return kElemF64;
    case at::kBFloat16: return kElemBF16;
    default: TORCH_CHECK(false, "dinat::na2d: internal error: no kernel storage for dtype ", t.scalar_type());
  }
}

Strided strided(const Tensor& t) {
  return Strided{t.data_ptr(), t.stride(0), t.stride(1), t.stride(2), t.stride(3), elem_of(t)};
}

struct AxisTables {
  std::vector<int32_t> start, inv_lo, inv_hi;
};

// Window start and inverse range (first / last query whose window holds a key) for every residue
// class of one axis, in sub-grid units; [residue * sub_len + index].
AxisTables axis_tables(int64_t L, int64_t K, int64_t d, int64_t sub_len) {
  AxisTables t;
  t.start.assign(d * sub_len, 0);
  t.inv_lo.assign(d * sub_len, 0);
  t.inv_hi.assign(d * sub_len, -1);
  const int64_t half = K / 2;
  for (int64_t r = 0; r < d; ++r) {
    const int64_t len = (L - r + d - 1) / d;
    for (int64_t i = 0; i < len; ++i) {
      const int64_t s = std::min(std::max(i - half, int64_t(0)), len - K);
      t.start[r * sub_len + i] = static_cast<int32_t>(s);
    }
    // window starts are non-decreasing in i, so the queries holding key j form a contiguous range
    for (int64_t j = 0; j < len; ++j) {
      t.inv_lo[r * sub_len + j] = static_cast<int32_t>(len);
      t.inv_hi[r * sub_len + j] = -1;
    }
    for (int64_t i = 0; i < len; ++i) {
      const int64_t s = t.start[r * sub_len + i];
      for (int64_t j = s; j < s + K; ++j) {
        if (i < t.inv_lo[r * sub_len + j]) t.inv_lo[r * sub_len + j] = static_cast<int32_t>(i);
        if (i > t.inv_hi[r * sub_len + j]) t.inv_hi[r * sub_len + j] = static_cast<int32_t>(i);
      }
    }
  }
  return t;
}

struct Problem {
  int64_t B, X, Y, H, D, K, dil, Xs, Ys, yp, rp;
  AxisTables xt, yt;
  std::vector<int32_t> x_first, x_m, blocks, groups;
  std::vector<int32_t> y_of_pos, pos_of_y;  // columns in chunk order (see Geometry)
  std::vector<int32_t> chunk_of_pos; // [Y]: the chunk of each position
  std::vector<int32_t> chunks;      // [n][3] = (first lane, end lane, step), PackArgs::chunks
  std::vector<int32_t> key_blocks, pattern_begin, pattern_st;  // backward pass 2 (plan_key_blocks)
  int64_t class_row_tasks() const { return B * dil * Xs; }  // backward pass 2: key rows, class by class
  // Backward pass 2 on key rows (else the per-key gather): always for dilation 1; for dilated maps
  // on the bfloat16-product kernels when every chunk's step fills a vector. One-process A/B on the
  // EPYC, one thread, rows / gather: bf16 1.12-1.29x on DiNAT's dilated shapes, no faster with
  // steps below a vector (64x64, 3 heads, d 4; 6 heads, d 2); float32 0.89-1.07x, so it keeps the
  // gather. set_key_pass() overrides (tests run both).
  bool key_rows(const Kernels& kern) const {
    const int forced = key_pass().load();
    if (forced != 0) return forced == 1;
    if (dil == 1) return true;
    if (!kern.dilated_rows) return false;
    for (size_t k = 0; k < chunks.size(); k += 3)
      if (chunks[k + 2] < kBiasLanes) return false;
    return true;
  }
  int64_t group_tasks() const { return B * static_cast<int64_t>(groups.size() / 2); }  // forward, backward pass 1
  LaneGeometry lane_geometry() const {
    return LaneGeometry{x_first.data(), x_m.data(), blocks.data(), static_cast<int64_t>(blocks.size() / kBlockInts), yp,
                        groups.data(), static_cast<int64_t>(groups.size() / 2)};
  }
  Geometry geometry() const {
    return Geometry{B, X, Y, H, D, K, dil, Xs, Ys, xt.start.data(), xt.inv_lo.data(), xt.inv_hi.data(),
                    yt.start.data(), yt.inv_lo.data(), yt.inv_hi.data(), y_of_pos.data(), pos_of_y.data()};
  }
};

// Query blocks of one row: maximal runs of consecutive positions (columns in chunk order, see
// Geometry) of one chunk whose windows have the same relative offsets (same m = position of the
// query inside its window) times all H heads (lanes j = pos * H + h), cut greedily into vectors of
// lanes, lanes/2 (and lanes/4 when lanes >= 8): (j0, count, m, block lanes, step). Key blocks are
// planned the same way with a pattern id for m.
std::vector<int32_t> plan_query_blocks(const std::vector<int32_t>& m_of_pos, const std::vector<int32_t>& chunk_of_pos,
                                       const std::vector<int32_t>& chunks, int64_t H, int lanes) {
  std::vector<int> sizes = {lanes, lanes / 2};
  if (lanes >= 8) sizes.push_back(lanes / 4);
  std::vector<int32_t> blocks;
  const int64_t Y = static_cast<int64_t>(m_of_pos.size());
  int64_t pos = 0;
  while (pos < Y) {
    int64_t run_end = pos;
    while (run_end < Y && m_of_pos[run_end] == m_of_pos[pos] && chunk_of_pos[run_end] == chunk_of_pos[pos]) ++run_end;
    const int32_t m = m_of_pos[pos], step = chunks[3 * chunk_of_pos[pos] + 2];
    int64_t j = pos * H;
    const int64_t j_end = run_end * H;
    while (j < j_end) {
      const int64_t left = j_end - j;
      int block_lanes = sizes.back();
      for (int size : sizes)
        if (size <= left) {
          block_lanes = size;
          break;
        }
      const int64_t count = std::min<int64_t>(block_lanes, left);
      blocks.insert(blocks.end(), {static_cast<int32_t>(j), static_cast<int32_t>(count), m, block_lanes, step});
      j += count;
    }
    pos = run_end;
  }
  return blocks;
}

// Columns in chunk order (see Geometry): y_of_pos, the chunk of each position and the chunk table.
void plan_columns(Problem& p) {
  const int64_t d = p.dil, H = p.H;
  const int64_t c_max = std::min<int64_t>(d, (kBiasLanes + H - 1) / H);
  p.y_of_pos.clear();
  p.chunk_of_pos.clear();
  p.chunks.clear();
  for (int64_t r0 = 0; r0 < d;) {
    // a remainder narrower than c_max joins this chunk: every step then fills a vector when H*d does
    const int64_t c = d - r0 < 2 * c_max ? d - r0 : c_max, first = static_cast<int64_t>(p.y_of_pos.size());
    const int32_t chunk = static_cast<int32_t>(p.chunks.size() / 3);
    // class r holds columns r, r + d, ...; the longer classes (the lowest r) come first in a chunk,
    // so every sub-grid position but the last holds all c classes and the step is c * H throughout
    for (int64_t s = 0; s * d + r0 < p.Y; ++s)
      for (int64_t r = r0; r < r0 + c && s * d + r < p.Y; ++r) {
        p.y_of_pos.push_back(static_cast<int32_t>(s * d + r));
        p.chunk_of_pos.push_back(chunk);
      }
    const int64_t end = static_cast<int64_t>(p.y_of_pos.size());
    p.chunks.insert(p.chunks.end(), {static_cast<int32_t>(first * H), static_cast<int32_t>(end * H), static_cast<int32_t>(c * H)});
    r0 += c;
  }
  p.pos_of_y.assign(p.Y, 0);
  for (int64_t pos = 0; pos < p.Y; ++pos) p.pos_of_y[p.y_of_pos[pos]] = static_cast<int32_t>(pos);
}

Problem make_problem(const Tensor& q, int64_t K, int64_t dil, int lanes) {
  Problem p;
  p.B = q.size(0);
  p.X = q.size(1);
  p.Y = q.size(2);
  p.H = q.size(3);
  p.D = q.size(4);
  p.K = K;
  p.dil = dil;
  TORCH_CHECK(K >= 3 && K % 2 == 1 && K <= kMaxKernelSize, "dinat::na2d: the compiled kernel supports odd kernel sizes 3..",
              kMaxKernelSize, ", got ", K, "; use backend='torch' for larger kernels");
  TORCH_CHECK(dil >= 1, "dinat::na2d: dilation must be >= 1, got ", dil);
  TORCH_CHECK(p.X >= K * dil && p.Y >= K * dil, "dinat::na2d: each spatial axis must be >= kernel_size * dilation = ",
              K * dil, ", got ", p.X, " x ", p.Y);
  p.Xs = (p.X + dil - 1) / dil;
  p.Ys = (p.Y + dil - 1) / dil;
  // Row length of the transposed rows: a multiple of 16 floats (one cache line) that is an odd
  // number of lines, so the D channel rows of a key row fall into different L1 sets (a
  // power-of-two-ish stride put all of them into a few sets and thrashed L1). Vector loads of a
  // block's unused lanes may run past a row into the next row's finite values; they are discarded.
  p.yp = (p.Y * p.H + 15) / 16 * 16;
  if ((p.yp / 16) % 2 == 0) p.yp += 16;
  p.rp = 2 * K - 1;
  p.xt = axis_tables(p.X, K, dil, p.Xs);
  p.yt = axis_tables(p.Y, K, dil, p.Ys);
  // original-coordinate window tables: first key and the query's own window position
  auto first_and_m = [&](int64_t L, const AxisTables& t, int64_t sub_len, std::vector<int32_t>& first,
                         std::vector<int32_t>& m) {
    first.resize(L);
    m.resize(L);
    for (int64_t i = 0; i < L; ++i) {
      const int64_t r = i % dil, pos = i / dil, start = t.start[r * sub_len + pos];
      first[i] = static_cast<int32_t>(start * dil + r);
      m[i] = static_cast<int32_t>(pos - start);
    }
  };
  first_and_m(p.X, p.xt, p.Xs, p.x_first, p.x_m);
  std::vector<int32_t> y_first, y_m;
  first_and_m(p.Y, p.yt, p.Ys, y_first, y_m);
  plan_columns(p);
  std::vector<int32_t> m_of_pos(p.Y);
  for (int64_t pos = 0; pos < p.Y; ++pos) m_of_pos[pos] = y_m[p.y_of_pos[pos]];
  p.blocks = plan_query_blocks(m_of_pos, p.chunk_of_pos, p.chunks, p.H, lanes);
  // row groups (see LaneGeometry): consecutive rows of each residue class, kRowGroup at a time
  for (int64_t r = 0; r < dil; ++r) {
    const int64_t len = (p.X - r + dil - 1) / dil;
    for (int64_t i = 0; i < len; i += kRowGroup)
      p.groups.insert(p.groups.end(), {static_cast<int32_t>(i * dil + r), static_cast<int32_t>(std::min<int64_t>(kRowGroup, len - i))});
  }
  return p;
}

// Key blocks of backward pass 2 (see BackwardKeyArgs): the keys of a row (columns in chunk order)
// grouped by their inverse-neighbourhood pattern along y, the (s, t) pairs of the queries y + s*d
// holding key y at window column t. Built only by the backward that uses them.
void plan_key_blocks(Problem& p, int lanes) {
  std::map<std::vector<int32_t>, int32_t> ids;
  std::vector<int32_t> pattern_of_pos(p.Y);
  p.pattern_begin.assign(1, 0);
  p.pattern_st.clear();
  for (int64_t pos = 0; pos < p.Y; ++pos) {
    const int64_t y = p.y_of_pos[pos], r = y % p.dil, kp = y / p.dil;
    std::vector<int32_t> st;
    for (int64_t i = p.yt.inv_lo[r * p.Ys + kp]; i <= p.yt.inv_hi[r * p.Ys + kp]; ++i)
      st.insert(st.end(), {static_cast<int32_t>(i - kp), static_cast<int32_t>(kp - p.yt.start[r * p.Ys + i])});
    auto it = ids.find(st);
    if (it == ids.end()) {
      it = ids.emplace(st, static_cast<int32_t>(ids.size())).first;
      p.pattern_st.insert(p.pattern_st.end(), st.begin(), st.end());
      p.pattern_begin.push_back(static_cast<int32_t>(p.pattern_st.size() / 2));
    }
    pattern_of_pos[pos] = it->second;
  }
  p.key_blocks = plan_query_blocks(pattern_of_pos, p.chunk_of_pos, p.chunks, p.H, lanes);
}

// The dS buffer of backward is reused across calls, per calling thread: a fresh allocation of
// this size is returned to the OS on free, and its first touch page-faults (~15 % of the op's time
// when measured). Retains one buffer the size of the attention weights.
Tensor scratch(int64_t numel, at::ScalarType dtype) {
  thread_local Tensor cache;
  if (!cache.defined() || cache.numel() < numel || cache.scalar_type() != dtype)
    cache = at::empty({numel}, at::TensorOptions().dtype(dtype));
  return cache.narrow(0, 0, numel);
}

// Contiguous tensor followed by kVectorPad zeros in its storage: backward pass 2 reads the saved
// weights and dS with full vectors whose unused lanes may run past the last element.
constexpr int64_t kVectorPad = 16;
Tensor padded_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  Tensor flat = at::empty({numel + kVectorPad}, options);
  flat.narrow(0, numel, kVectorPad).zero_();
  return flat.narrow(0, 0, numel).view(sizes);
}
bool has_vector_pad(const Tensor& t) {
  return t.is_contiguous() &&
         static_cast<int64_t>(t.storage().nbytes()) >= (t.storage_offset() + t.numel() + kVectorPad) * t.element_size();
}

PackArgs pack_args(const Tensor& t, const Problem& P) {
  return PackArgs{strided(t), P.X, P.Y, P.H, P.D, P.yp, P.y_of_pos.data(), P.chunks.data(),
                  static_cast<int64_t>(P.chunks.size() / 3)};
}

// [H phases, 2K-1, 2K-1, 16]: lane l of phase p holds rpb[(p + l) % H] in the compute dtype (the
// bias of a vector of lanes j0.. with j0 % H = p); all zeros without rpb
Tensor bias_table(const c10::optional<Tensor>& rpb, const Problem& P, at::ScalarType dtype) {
  const int64_t K2 = 2 * P.K - 1;
  if (!(rpb.has_value() && rpb->defined())) return at::zeros({P.H, K2, K2, kBiasLanes}, at::TensorOptions().dtype(dtype));
  const Tensor& r = *rpb;
  TORCH_CHECK(r.dim() == 3 && r.size(0) == P.H && r.size(1) == K2 && r.size(2) == K2,
              "dinat::na2d: rpb must be [heads, 2*kernel_size-1, 2*kernel_size-1] = [", P.H, ", ", K2, ", ", K2,
              "], got ", r.sizes());
  // heads of lane l of phase p: (p + l) % H; filled by a loop (a few thousand values): the
  // permute / index_select / contiguous chain it replaced cost 0.17 ms a call at DiNAT-T's 50x76
  // stage with 8 heads (~7 % of the bfloat16 forward there), 45 us at 14x14
  const Tensor src = r.to(at::kCPU).to(dtype).contiguous();
  Tensor table = at::empty({P.H, K2, K2, kBiasLanes}, src.options());
  const int64_t plane = K2 * K2;
  AT_DISPATCH_FLOATING_TYPES(dtype, "dinat::na2d bias table", [&] {
    const scalar_t* from = src.data_ptr<scalar_t>();
    scalar_t* to = table.data_ptr<scalar_t>();
    for (int64_t p = 0; p < P.H; ++p)
      for (int64_t ij = 0; ij < plane; ++ij)
        for (int64_t l = 0; l < kBiasLanes; ++l) to[(p * plane + ij) * kBiasLanes + l] = from[((p + l) % P.H) * plane + ij];
  });
  return table;
}

// Runs n_tasks tasks on the intra-op threads with work stealing (see TaskSource in na2d_kernel.h):
// worker w starts on the w-th of equal contiguous shares (consecutive tasks reuse each other's
// transposed rows) and takes single tasks off the others' back ends once its own is done.
// run(source) is one worker's whole run (one kernel call: its row caches live across its tasks);
// where at::parallel_for runs inline (one thread, or inside another parallel region) the first
// worker simply takes every task.
template <class Run>
void run_tasks(int64_t n_tasks, Run&& run) {
  TORCH_CHECK(n_tasks < (int64_t(1) << 31), "dinat: too many tasks for one call (", n_tasks, ")");
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tasks));
  std::vector<uint64_t> shares(static_cast<size_t>(workers));
  for (int64_t w = 0; w < workers; ++w)
    shares[w] = (static_cast<uint64_t>(n_tasks * w / workers) << 32) | static_cast<uint64_t>(n_tasks * (w + 1) / workers);
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      TaskSource source{shares.data(), static_cast<int32_t>(workers), static_cast<int32_t>(w)};
      run(source);
    }
  });
}

// f(begin, end) over [0, n) in pieces of `piece` (the last shorter), as tasks of run_tasks: the
// block's elementwise kernels (GELU backward, LayerNorm) split like the attention's passes, so
// that a late or descheduled thread's share is taken over rather than waited for.
template <class F>
void parallel_pieces(int64_t n, int64_t piece, F&& f) {
  run_tasks((n + piece - 1) / piece, [&](TaskSource& tasks) {
    for (int64_t t; (t = take_task(tasks)) >= 0;) f(t * piece, std::min(n, (t + 1) * piece));
  });
}

// ---------------------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------------------
std::tuple<Tensor, Tensor> na2d_forward(const Tensor& query, const Tensor& key, const Tensor& value,
                                        const c10::optional<Tensor>& rpb, int64_t kernel_size, int64_t dilation,
                                        double scale, bool save_weights) {
  check_qkv(query, "query", query);
  check_qkv(key, "key", query);
  check_qkv(value, "value", query);
  const at::ScalarType cdt = compute_dtype_of(query), sdt = storage_dtype_of({&query, &key, &value});
  const Kernels kern = kernels_for(sdt);
  Problem P = make_problem(query, kernel_size, dilation, kern.lanes);
  const Tensor q = prepare(query, sdt), k = prepare(key, sdt), v = prepare(value, sdt);
  const Tensor bias = bias_table(rpb, P, cdt);
  Tensor out = at::empty({P.B, P.X, P.Y, P.H, P.D}, q.options());
  const auto wopt = q.options().dtype(weights_dtype(sdt, cdt));
  Tensor weights = save_weights ? padded_empty({P.B, P.X, P.K * P.K, P.Y, P.H}, wopt) : at::empty({0}, wopt);
  ForwardArgs args{P.geometry(), P.lane_geometry(), pack_args(q, P), pack_args(k, P), pack_args(v, P), strided(out),
                   bias.data_ptr(), save_weights ? weights.data_ptr() : nullptr, scale};
  run_tasks(P.group_tasks(), [&](TaskSource& tasks) { kern.forward(args, tasks); });
  return {out.to(query.scalar_type()), weights};
}

// Returns (grad_qkv [B, X, Y, 3, heads, head_dim], grad_rpb): dq, dk, dv are written into one buffer, the
// layout of the qkv projection q, k, v are usually unbound from, so that its gradient needs no stack
// (ops/modules.py hands the buffer on as the projection's gradient; a stack of three stage-1 maps cost
// as much as a tenth of the op's backward, most of it first touches of a fresh allocation).
std::tuple<Tensor, Tensor> na2d_backward(const Tensor& grad_out, const Tensor& query, const Tensor& key,
                                                         const Tensor& value, const Tensor& weights,
                                                         const c10::optional<Tensor>& rpb, int64_t kernel_size,
                                                         int64_t dilation, double scale) {
  check_qkv(query, "query", query);
  check_qkv(key, "key", query);
  check_qkv(value, "value", query);
  check_qkv(grad_out, "grad_out", query);
  const at::ScalarType cdt = compute_dtype_of(query), sdt = storage_dtype_of({&query, &key, &value, &grad_out});
  const Kernels kern = kernels_for(sdt);
  Problem P = make_problem(query, kernel_size, dilation, kern.lanes);
  TORCH_CHECK(weights.dim() == 5 && weights.size(0) == P.B && weights.size(1) == P.X && weights.size(2) == P.K * P.K &&
                  weights.size(3) == P.Y && weights.size(4) == P.H,
              "dinat::na2d_backward: weights must be the [B, X, K*K, Y, heads] tensor saved by na2d_forward(save_weights=True), got ",
              weights.sizes());
  const Tensor q = prepare(query, sdt), k = prepare(key, sdt), v = prepare(value, sdt), go = prepare(grad_out, sdt);
  const at::ScalarType wdt = weights_dtype(sdt, cdt);
  Tensor w = weights.to(wdt).contiguous();
  if (!has_vector_pad(w)) {  // weights not made by na2d_forward
    Tensor copy = padded_empty(w.sizes(), w.options());
    copy.copy_(w);
    w = copy;
  }
  Tensor grad_logits = scratch(w.numel() + kVectorPad, wdt);
  grad_logits.narrow(0, w.numel(), kVectorPad).zero_();
  Tensor grad_qkv = at::empty({P.B, P.X, P.Y, 3, P.H, P.D}, q.options());
  Tensor dq = grad_qkv.select(3, 0), dk = grad_qkv.select(3, 1), dv = grad_qkv.select(3, 2);
  const Geometry geo = P.geometry();

  const int threads = at::get_num_threads();
  const int64_t drpb_size = P.H * (2 * P.K - 1) * P.rp;
  std::vector<double> drpb_acc(static_cast<size_t>(threads) * drpb_size, 0.0);
  BackwardQueryArgs qargs{geo,           P.lane_geometry(), pack_args(go, P), pack_args(k, P), pack_args(v, P), strided(dq),
                          w.data_ptr(),  grad_logits.data_ptr(), P.rp, scale};
  run_tasks(P.group_tasks(), [&](TaskSource& tasks) {
    const int tid = at::get_thread_num();
    TORCH_CHECK(tid >= 0 && tid < threads, "dinat::na2d_backward: unexpected thread id ", tid);
    kern.backward_query(qargs, tasks, drpb_acc.data() + tid * drpb_size);
  });
  const bool key_rows = P.key_rows(kern);
  if (key_rows) plan_key_blocks(P, kern.lanes);
  BackwardKeyArgs kargs{geo,
                        strided(dk),
                        strided(dv),
                        pack_args(q, P),
                        pack_args(go, P),
                        w.data_ptr(),
                        grad_logits.data_ptr(),
                        P.key_blocks.data(),
                        static_cast<int64_t>(P.key_blocks.size() / kBlockInts),
                        P.pattern_begin.data(),
                        P.pattern_st.data(),
                        scale};
  const auto backward_key = key_rows ? kern.backward_key : kern.backward_key_gather;
  run_tasks(P.class_row_tasks(), [&](TaskSource& tasks) { backward_key(kargs, tasks); });

  const bool has_rpb = rpb.has_value() && rpb->defined();
  Tensor drpb;
  if (has_rpb) {
    Tensor total = at::zeros({P.H, 2 * P.K - 1, P.rp}, at::TensorOptions().dtype(at::kDouble));
    double* tp = total.data_ptr<double>();
    for (int t = 0; t < threads; ++t)
      for (int64_t i = 0; i < drpb_size; ++i) tp[i] += drpb_acc[t * drpb_size + i];
    drpb = total.narrow(2, 0, 2 * P.K - 1).to(rpb->scalar_type()).contiguous();
  } else {
    drpb = at::empty({0}, query.options());
  }
  return {grad_qkv.to(query.scalar_type()), drpb};
}

// The memory-lean MLP's GELU backward (dinat_backbone/lean.py): from the fc1 output h and the
// gradient of gelu(h), (gelu(h), grad * gelu'(h)) in one pass, one erfc and one exp per element
// (ATen needs a gelu pass to recompute gelu(h) and a gelu_backward pass, each with its own erf).
// grad_input may be grad itself (gelu_backward_): each element is read before it is overwritten.
void check_gelu_backward_args(const Tensor& grad, const Tensor& input, const char* op) {
  TORCH_CHECK(grad.sizes() == input.sizes(), op, ": grad has shape ", grad.sizes(), ", input has shape ",
              input.sizes());
  TORCH_CHECK(grad.scalar_type() == input.scalar_type() &&
                  (input.scalar_type() == at::kBFloat16 || input.scalar_type() == at::kFloat),
              op, ": grad and input must both be bfloat16 or both float32, got ", grad.scalar_type(), " and ",
              input.scalar_type());
  TORCH_CHECK(grad.device().is_cpu() && input.device().is_cpu(), op, ": CPU tensors only");
}

void gelu_backward_into(const Tensor& g, const Tensor& x, Tensor& act, Tensor& grad_input) {
  const GeluBackwardFn fn = kernels_for(x.scalar_type()).gelu_backward;  // the attention kernels' ISA table
  const void *gp = g.data_ptr(), *xp = x.data_ptr();
  void *op = act.data_ptr(), *gip = grad_input.data_ptr();
  parallel_pieces(x.numel(), 1 << 15, [&](int64_t begin, int64_t end) { fn(gp, xp, op, gip, begin, end); });
}

std::tuple<Tensor, Tensor> gelu_backward(const Tensor& grad, const Tensor& input) {
  check_gelu_backward_args(grad, input, "dinat::gelu_backward");
  const Tensor g = grad.contiguous(), x = input.contiguous();
  Tensor act = at::empty(x.sizes(), x.options()), grad_input = at::empty(x.sizes(), x.options());
  gelu_backward_into(g, x, act, grad_input);
  return {act, grad_input};
}

// gelu_backward writing grad * gelu'(input) over grad (a contiguous tensor the caller owns: the
// memory-lean MLP's fc2 input gradient, fresh from its GEMM), returning gelu(input): no second
// fresh tensor of the MLP's width, whose first touches cost as much as the kernel at stage 1.
Tensor gelu_backward_(Tensor& grad, const Tensor& input) {
  const char* op = "dinat::gelu_backward_";
  check_gelu_backward_args(grad, input, op);
  TORCH_CHECK(grad.is_contiguous(), op, ": grad is overwritten in place and must be contiguous; call "
              "gelu_backward(grad, input) for a new tensor instead");
  const Tensor x = input.contiguous();
  Tensor act = at::empty(x.sizes(), x.options());
  gelu_backward_into(grad, x, act, grad);
  return act;
}

// ---------------------------------------------------------------------------------------------
// LayerNorm of the DiNAT block (layer_norm_impl.h)
// ---------------------------------------------------------------------------------------------
// the normalised tensor: a float32 / bfloat16 CPU tensor with a non-empty last axis
void check_norm_input_tensor(const Tensor& input, const char* op) {
  TORCH_CHECK(input.device().is_cpu(), op, ": CPU tensors only, got input on ", input.device());
  TORCH_CHECK(input.scalar_type() == at::kBFloat16 || input.scalar_type() == at::kFloat, op,
              ": input must be bfloat16 or float32, got ", input.scalar_type());
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) > 0, op, ": input needs a non-empty last axis, got shape ",
              input.sizes());
}

// a tensor that must match the normalised one (the residual, the output gradient)
void check_norm_input(const Tensor& t, const char* name, const Tensor& input, const char* op) {
  TORCH_CHECK(t.device().is_cpu(), op, ": CPU tensors only, got ", name, " on ", t.device());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name, " must have input's dtype ",
              input.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == input.sizes(), op, ": ", name, " has shape ", t.sizes(), ", input has shape ", input.sizes());
}

// weight / bias as the contiguous float32 [C] vector the kernel reads (`absent` where there is none)
Tensor norm_param(const c10::optional<Tensor>& p, const char* name, int64_t C, const char* op, float absent) {
  if (!p.has_value() || !p->defined()) return at::full({C}, absent, at::TensorOptions().dtype(at::kFloat));
  TORCH_CHECK(p->device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", p->device());
  TORCH_CHECK(p->dim() == 1 && p->size(0) == C, op, ": ", name, " must have shape [", C,
              "] (input's last axis), got ", p->sizes());
  TORCH_CHECK(p->is_floating_point(), op, ": ", name, " must be floating point, got ", p->scalar_type());
  return p->to(at::kFloat).contiguous();
}

// Rows of at least this many elements per parallel chunk (short rows are cheap).
constexpr int64_t kNormGrainElems = 1 << 15;

// LayerNorm over the last axis of a float32 / bfloat16 CPU tensor, optionally of input + residual:
// returns (out, sum, mean, rstd); sum = input + residual as rounded to the dtype (empty without a
// residual), mean / rstd float32 of shape input.shape[:-1] + [1] (as aten::native_layer_norm).
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_norm(const Tensor& input, const c10::optional<Tensor>& residual,
                                                      const c10::optional<Tensor>& weight,
                                                      const c10::optional<Tensor>& bias, double eps) {
  const char* op = "dinat::layer_norm";
  check_norm_input_tensor(input, op);
  const int64_t C = input.size(-1), rows = input.numel() / C;
  const Tensor x = input.contiguous();
  Tensor r;
  if (residual.has_value() && residual->defined()) {
    check_norm_input(*residual, "residual", input, op);
    r = residual->contiguous();
  }
  const Tensor w = norm_param(weight, "weight", C, op, 1.0f), b = norm_param(bias, "bias", C, op, 0.0f);
  Tensor out = at::empty(x.sizes(), x.options());
  Tensor sum = r.defined() ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  std::vector<int64_t> stat_shape(x.sizes().begin(), x.sizes().end());
  stat_shape.back() = 1;
  Tensor mean = at::empty(stat_shape, x.options().dtype(at::kFloat)), rstd = at::empty(stat_shape, mean.options());
  LayerNormArgs a{x.data_ptr(), r.defined() ? r.data_ptr() : nullptr, r.defined() ? sum.data_ptr() : nullptr,
                  out.data_ptr(), w.data_ptr<float>(), b.data_ptr<float>(), mean.data_ptr<float>(), rstd.data_ptr<float>(), C,
                  static_cast<float>(eps)};
  const LayerNormFn fn = kernels_for(x.scalar_type()).layer_norm;
  parallel_pieces(rows, std::max<int64_t>(1, kNormGrainElems / C), [&](int64_t begin, int64_t end) { fn(a, begin, end); });
  return {out, sum, mean, rstd};
}

// Gradients of layer_norm (of its normalised input: the sum, with a residual) from the forward's
// mean / rstd: (grad_input, grad_weight, grad_bias), each empty where output_mask says not wanted;
// grad_weight / grad_bias in the weight's dtype, summed over rows in float64 from float32 partial
// sums of at most kNormChunkRows rows.
constexpr int64_t kNormChunkRows = 256;

// grad_input: an empty tensor where not wanted, else a contiguous tensor shaped like input (grad_out
// itself for layer_norm_backward_: the kernel reads each element of a row before overwriting it)
std::tuple<Tensor, Tensor> layer_norm_backward_into(const Tensor& grad_out, const Tensor& input, const Tensor& mean,
                                                    const Tensor& rstd, const c10::optional<Tensor>& weight,
                                                    bool want_weight_grad, bool want_bias_grad, const Tensor& grad_input,
                                                    const char* op) {
  check_norm_input_tensor(input, op);
  check_norm_input(grad_out, "grad_out", input, op);
  const int64_t C = input.size(-1), rows = input.numel() / C;
  for (const Tensor* s : {&mean, &rstd})
    TORCH_CHECK(s->scalar_type() == at::kFloat && s->device().is_cpu() && s->numel() == rows, op,
                ": mean and rstd must be float32 CPU tensors of ", rows, " elements (layer_norm's), got ",
                s->scalar_type(), " ", s->sizes());
  const bool has_weight = weight.has_value() && weight->defined();
  const Tensor w = norm_param(weight, "weight", C, op, 1.0f);
  const bool want_weight = want_weight_grad && has_weight, want_bias = want_bias_grad;
  const Tensor x = input.contiguous(), g = grad_out.contiguous(), m = mean.contiguous(), rs = rstd.contiguous();
  const int64_t n_chunks = (rows + kNormChunkRows - 1) / kNormChunkRows;
  Tensor partial = at::zeros({want_weight || want_bias ? n_chunks : 0, 2, C}, x.options().dtype(at::kFloat));
  LayerNormBackwardArgs a{g.data_ptr(), x.data_ptr(), m.data_ptr<float>(), rs.data_ptr<float>(), w.data_ptr<float>(),
                          grad_input.numel() ? grad_input.data_ptr() : nullptr, C};
  const LayerNormBackwardFn fn = kernels_for(x.scalar_type()).layer_norm_backward;
  float* pp = partial.numel() ? partial.data_ptr<float>() : nullptr;
  parallel_pieces(n_chunks, std::max<int64_t>(1, kNormGrainElems / (C * kNormChunkRows)), [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      float* acc = pp ? pp + chunk * 2 * C : nullptr;
      fn(a, chunk * kNormChunkRows, std::min(rows, (chunk + 1) * kNormChunkRows), want_weight ? acc : nullptr,
         want_bias ? acc + C : nullptr);
    }
  });
  Tensor grad_weight, grad_bias;
  if (want_weight || want_bias) {
    const Tensor total = partial.to(at::kDouble).sum(0);  // [2, C]
    if (want_weight) grad_weight = total[0].to(weight->scalar_type());
    if (want_bias) grad_bias = total[1].to(has_weight ? weight->scalar_type() : at::kFloat);
  }
  const auto or_empty = [&](const Tensor& t) { return t.defined() ? t : at::empty({0}, x.options()); };
  return {or_empty(grad_weight), or_empty(grad_bias)};
}

std::tuple<Tensor, Tensor, Tensor> layer_norm_backward(const Tensor& grad_out, const Tensor& input, const Tensor& mean,
                                                       const Tensor& rstd, const c10::optional<Tensor>& weight,
                                                       std::array<bool, 3> output_mask) {
  const Tensor grad_input = output_mask[0] ? at::empty(input.sizes(), input.options()) : at::empty({0}, input.options());
  auto [grad_weight, grad_bias] = layer_norm_backward_into(grad_out, input, mean, rstd, weight, output_mask[1],
                                                           output_mask[2], grad_input, "dinat::layer_norm_backward");
  return {grad_input, grad_weight, grad_bias};
}

// layer_norm_backward writing the input gradient over grad_out (a contiguous tensor the caller owns:
// the memory-lean LayerNorm -> Linear's gradient of the normalised map, fresh from its GEMM);
// returns (grad_weight, grad_bias) as layer_norm_backward does
std::tuple<Tensor, Tensor> layer_norm_backward_(Tensor& grad_out, const Tensor& input, const Tensor& mean,
                                                const Tensor& rstd, const c10::optional<Tensor>& weight,
                                                std::array<bool, 2> output_mask) {
  const char* op = "dinat::layer_norm_backward_";
  TORCH_CHECK(grad_out.is_contiguous(), op, ": grad_out is overwritten in place and must be contiguous; call "
              "layer_norm_backward for a new tensor instead");
  return layer_norm_backward_into(grad_out, input, mean, rstd, weight, output_mask[0], output_mask[1], grad_out, op);
}

std::string active_isa_name() { return isa_name(static_cast<Isa>(active_isa().load())); }

// Cap the instruction set ("generic", "avx2", "avx512", "avx512bf16"); returns the one now active, which is
// lower than requested when the CPU lacks it.
std::string set_isa(const std::string& name) {
  Isa best = best_supported_isa();
  for (Isa cand : kAllIsas) {
    if (name == isa_name(cand)) {
      active_isa().store(static_cast<int>(static_cast<int>(cand) <= static_cast<int>(best) ? cand : best));
      return active_isa_name();
    }
  }
  TORCH_CHECK(false, "dinat: unknown instruction set '", name, "'; choose generic, avx2, avx512 or avx512bf16");
}

// Backward pass 2 for testing both: "auto" (per problem), "rows" or "gather"; returns the previous setting.
std::string set_key_pass(const std::string& name) {
  static const char* names[] = {"auto", "rows", "gather"};
  const std::string previous = names[key_pass().load()];
  for (int i = 0; i < 3; ++i)
    if (name == names[i]) {
      key_pass().store(i);
      return previous;
    }
  TORCH_CHECK(false, "dinat: unknown backward key pass '", name, "'; choose auto, rows or gather");
}

}  // namespace
}  // namespace dinat

// The op namespace is a macro only so that a renamed copy can be loaded beside the installed one
// (A/B timing in one process); builds of the package always use "dinat".
#ifndef DINAT_OPS_NS
#define DINAT_OPS_NS dinat
#endif
#define DINAT_TORCH_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define DINAT_TORCH_LIBRARY_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)

DINAT_TORCH_LIBRARY(DINAT_OPS_NS, m) {
  m.def(
      "na2d_forward(Tensor query, Tensor key, Tensor value, Tensor? rpb, int kernel_size, int dilation, float scale, "
      "bool save_weights) -> (Tensor, Tensor)");
  m.def(
      "na2d_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor weights, Tensor? rpb, "
      "int kernel_size, int dilation, float scale) -> (Tensor, Tensor)");
  m.def("gelu_backward(Tensor grad, Tensor input) -> (Tensor, Tensor)");
  m.def("gelu_backward_(Tensor(a!) grad, Tensor input) -> Tensor");
  m.def("layer_norm(Tensor input, Tensor? residual, Tensor? weight, Tensor? bias, float eps) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
  m.def("layer_norm_backward(Tensor grad_out, Tensor input, Tensor mean, Tensor rstd, Tensor? weight, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("layer_norm_backward_(Tensor(a!) grad_out, Tensor input, Tensor mean, Tensor rstd, Tensor? weight, "
        "bool[2] output_mask) -> (Tensor, Tensor)");
}

DINAT_TORCH_LIBRARY_IMPL(DINAT_OPS_NS, CPU, m) {
  m.impl("na2d_forward", &dinat::na2d_forward);
  m.impl("na2d_backward", &dinat::na2d_backward);
  m.impl("gelu_backward", &dinat::gelu_backward);
  m.impl("gelu_backward_", &dinat::gelu_backward_);
  m.impl("layer_norm", &dinat::layer_norm);
  m.impl("layer_norm_backward", &dinat::layer_norm_backward);
  m.impl("layer_norm_backward_", &dinat::layer_norm_backward_);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "dinat_backbone compiled CPU kernel; the ops are torch.ops.dinat.na2d_forward / na2d_backward";
  m.def("isa", &dinat::active_isa_name, "instruction set of the kernels in use");
  m.def("best_isa", []() { return std::string(dinat::isa_name(dinat::best_supported_isa())); },
        "best instruction set this CPU supports");
  m.def("set_key_pass", &dinat::set_key_pass,
        "backward pass 2 (testing): 'auto' (per problem), 'rows' or 'gather'; returns the previous setting");
  m.def("set_isa", &dinat::set_isa, "cap the instruction set (generic, avx2, avx512, avx512bf16); returns the active one");
  m.def("max_kernel_size", []() { return static_cast<int>(dinat::kMaxKernelSize); },
        "largest kernel size the compiled kernel handles (its stack buffers are sized by it)");
}
