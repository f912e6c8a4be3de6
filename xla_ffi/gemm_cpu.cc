// CPU approximate batched GEMM: the XLA FFI handler, the blocking and the
// threading. The inner loops live in gemm_kernels.cc (one object per
// instruction set); the bit-level multiply in approx_multiply.h.
//
// Design (see docs in approxjax/_ffi.py and benchmarks/RESULTS.md):
//   * One operand is "streamed" (its rows packed once into table index and
//     exact scale), the other is "tabled": for a block of 64 of its columns
//     and a few k, the per-tile table tab[k][v][c] = lut[v, j(b)] * scale(b)
//     turns the inner loop into plain FMA streams over contiguous rows of the
//     table. The operand with the longer free dimension is streamed, so the
//     table is built as few times as possible.
//   * Every output is the sum of its products in order of k, starting from
//     -0.0 (so a single product keeps its sign of zero); products are exact,
//     so FMA or not, every instruction set gives the same bits.
//   * Operands outside the "regular" exponent range (inf, NaN, extreme
//     exponents) mark their row or column; those outputs are recomputed with
//     ApproxMultiply itself, in the same order of k.
#include "gemm_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "approx_multiply.h"
#include "gemm_kernels.h"

namespace ffi = xla::ffi;

namespace approxjax {
namespace {

// Budgets that keep a worker's table and output block in its L2 cache.
// Measured on a 2-core Zen machine (benchmarks/RESULTS.md): an L2-sized table
// (fewer passes over the output block) beat an L1-sized one.
constexpr int64_t kTableFloats = 64 * 1024;  // 256 KiB of per-tile table
constexpr int64_t kBlockRows = 1024;          // output block: 256 KiB
constexpr int64_t kGatherDepth = 256;        // k per packed column block

struct AlignedDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
using AlignedArray = std::unique_ptr<T[], AlignedDeleter>;

template <typename T>
AlignedArray<T> AllocateAligned(int64_t n) {
  size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
  bytes = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (p == nullptr) throw std::bad_alloc();
  return AlignedArray<T>(static_cast<T*>(p));
}

// A batch of matrices laid out [lead..., rows, cols] with broadcasting.
struct Operand {
  const float* data;
  std::vector<int64_t> lead_stride;  // per leading dim, 0 where broadcast
  int64_t matrix_count;              // product of its leading dims
};

// The whole problem after validation, shared by every worker.
struct Problem {
  const float* lhs;
  const float* rhs;
  const float* lut;
  float* out;
  int64_t m_rows, n_cols, depth;  // M, N, K
  int m;                          // mantissa bits
  int range;                      // regular exponent range
  bool transpose_lhs, transpose_rhs;
  bool swap;   // stream rhs^T and table lhs^T
  bool table;  // per-tile tables (else gather)
  std::vector<int64_t> out_lead;
  Operand a, b, l;
  int64_t batch;  // product of out_lead

  // Streamed side (rows R) and tabled side (cols C), both of depth K.
  int64_t rows, cols;
  int64_t s_rs, s_ks, t_ks, t_cs;  // element strides
  const float* s_data;
  const float* t_data;
  const Operand* s_op;
  const Operand* t_op;

  // Packed streamed operand: [s_op->matrix_count][rows][depth].
  AlignedArray<uint16_t> idx;
  AlignedArray<float> scale;
  std::vector<uint8_t> row_irregular;  // [s matrices][rows]
  std::vector<uint8_t> col_irregular;  // [t matrices][cols]
  std::vector<float> lut_t;            // transposed tables (table, !swap)

  int64_t col_blocks, row_chunk, row_chunks, units;
  int64_t kc;
  const KernelTable* kernels;

  // Offsets (in matrices) of batch element g in each operand.
  void Offsets(int64_t g, int64_t* oa, int64_t* ob, int64_t* ol) const {
    *oa = *ob = *ol = 0;
    for (int d = static_cast<int>(out_lead.size()) - 1; d >= 0; --d) {
      const int64_t i = g % out_lead[d];
      g /= out_lead[d];
      *oa += i * a.lead_stride[d];
      *ob += i * b.lead_stride[d];
      *ol += i * l.lead_stride[d];
    }
  }

  float Lhs(int64_t oa, int64_t i, int64_t k) const {
    const float* base = lhs + oa * m_rows * depth;
    return transpose_lhs ? base[k * m_rows + i] : base[i * depth + k];
  }
  float Rhs(int64_t ob, int64_t k, int64_t n) const {
    const float* base = rhs + ob * depth * n_cols;
    return transpose_rhs ? base[n * depth + k] : base[k * n_cols + n];
  }
};

// One output by the reference rule: products in order of k from -0.0.
float SlowOutput(const Problem& p, int64_t oa, int64_t ob, const float* lut,
                 int64_t i, int64_t n) {
  float acc = -0.0f;
  for (int64_t k = 0; k < p.depth; ++k) {
    acc += ApproxMultiply(p.Lhs(oa, i, k), p.Rhs(ob, k, n), lut, p.m);
  }
  return acc;
}

struct Scratch {
  AlignedArray<float> tab;
  AlignedArray<float> cblk;
  AlignedArray<uint16_t> jb;
  AlignedArray<float> sb;
};

void RunUnit(const Problem& p, int64_t unit, Scratch& s) {
  const int64_t rc = unit % p.row_chunks;
  const int64_t cb = (unit / p.row_chunks) % p.col_blocks;
  const int64_t g = unit / (p.row_chunks * p.col_blocks);
  int64_t oa, ob, ol;
  p.Offsets(g, &oa, &ob, &ol);
  const int64_t os = p.swap ? ob : oa;
  const int64_t ot = p.swap ? oa : ob;
  const int64_t lut_size = int64_t{1} << (2 * p.m);
  const float* lut = p.lut + ol * lut_size;
  const int64_t r0 = rc * p.row_chunk;
  const int64_t rows = std::min(p.row_chunk, p.rows - r0);
  const int64_t c0 = cb * kBlockCols;
  const int64_t ncols = std::min<int64_t>(kBlockCols, p.cols - c0);

  float* cblk = s.cblk.get();
  const float neg_zero = -0.0f;
  std::fill(cblk, cblk + rows * kBlockCols, neg_zero);

  const uint16_t* idx = p.idx.get() + (os * p.rows + r0) * p.depth;
  const float* scale = p.scale.get() + (os * p.rows + r0) * p.depth;
  const float* tmat = p.t_data + ot * p.depth * p.cols;  // tabled matrix
  for (int64_t k0 = 0; k0 < p.depth; k0 += p.kc) {
    const int64_t kc = std::min(p.kc, p.depth - k0);
    const float* b = tmat + k0 * p.t_ks + c0 * p.t_cs;
    if (p.table) {
      const float* lut_rows = p.swap ? lut : p.lut_t.data() + ol * lut_size;
      p.kernels->build_table(s.tab.get(), lut_rows, p.m, b, p.t_ks, p.t_cs, kc,
                             ncols, p.range);
      p.kernels->table_sweep(cblk, rows, idx + k0, scale + k0, p.depth, kc,
                             s.tab.get(), p.m);
    } else {
      p.kernels->pack_cols(b, p.t_ks, p.t_cs, kc, ncols, p.m, p.range,
                           s.jb.get(), s.sb.get());
      p.kernels->gather_sweep(cblk, rows, idx + k0, scale + k0, p.depth, kc,
                              s.jb.get(), s.sb.get(), lut, p.m);
    }
  }

  // Write back, and recompute outputs touched by irregular operands.
  float* out = p.out + g * p.m_rows * p.n_cols;
  const uint8_t* rirr = p.row_irregular.data() + os * p.rows + r0;
  const uint8_t* cirr = p.col_irregular.data() + ot * p.cols + c0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = cblk + r * kBlockCols;
    for (int64_t c = 0; c < ncols; ++c) {
      const int64_t i = p.swap ? c0 + c : r0 + r;
      const int64_t n = p.swap ? r0 + r : c0 + c;
      float v = src[c];
      if (rirr[r] || cirr[c]) v = SlowOutput(p, oa, ob, lut, i, n);
      out[i * p.n_cols + n] = v;
    }
  }
}

struct SharedState {
  Problem problem;
  std::atomic<int64_t> next{0};
  ffi::CountDownPromise done;
};

void Worker(const std::shared_ptr<SharedState>& state) {
  const Problem& p = state->problem;
  try {
    Scratch s;
    const int64_t size = int64_t{1} << p.m;
    s.cblk = AllocateAligned<float>(p.row_chunk * kBlockCols);
    if (p.table) {
      s.tab = AllocateAligned<float>(p.kc * size * kBlockCols);
    } else {
      s.jb = AllocateAligned<uint16_t>(p.kc * kBlockCols);
      s.sb = AllocateAligned<float>(p.kc * kBlockCols);
    }
    for (int64_t u = state->next.fetch_add(1); u < p.units;
         u = state->next.fetch_add(1)) {
      RunUnit(p, u, s);
    }
    state->done.CountDown();
  } catch (const std::bad_alloc&) {
    state->done.CountDown(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                                     "approxjax: out of memory in GEMM"));
  } catch (const std::exception& e) {
    state->done.CountDown(ffi::Error::Internal(
        std::string("approxjax: GEMM worker failed: ") + e.what()));
  }
}

ffi::Future Failed(ffi::Error error) {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetError(std::move(error));
  return future;
}

ffi::Future Done() {
  ffi::Promise promise;
  ffi::Future future(promise);
  promise.SetAvailable();
  return future;
}

std::string DimsString(ffi::Span<const int64_t> dims) {
  std::string s = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + (dims.size() == 1 ? ",)" : ")");
}

// Leading-dimension strides (in matrices) of one operand against out_lead.
ffi::Error LeadStrides(const char* name, ffi::Span<const int64_t> dims,
                       const std::vector<int64_t>& out_lead, Operand* op) {
  const size_t lead = out_lead.size();
  op->lead_stride.assign(lead, 0);
  int64_t stride = 1;
  for (int d = static_cast<int>(lead) - 1; d >= 0; --d) {
    const int64_t size = dims[d];
    if (size != 1 && size != out_lead[d]) {
      return ffi::Error::InvalidArgument(
          std::string("approxjax_gemm: ") + name + " shape " +
          DimsString(dims) + " does not broadcast to the output's batch");
    }
    op->lead_stride[d] = size == 1 ? 0 : stride;
    stride *= size;
  }
  op->matrix_count = stride;
  return ffi::Error::Success();
}

ffi::Future ApproxGemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> lhs,
                           ffi::Buffer<ffi::F32> rhs, ffi::Buffer<ffi::F32> lut,
                           ffi::ResultBuffer<ffi::F32> out, bool transpose_lhs,
                           bool transpose_rhs) {
  auto ld = lhs.dimensions(), rd = rhs.dimensions(), lud = lut.dimensions(),
       od = out->dimensions();
  const size_t rank = od.size();
  if (rank < 2 || ld.size() != rank || rd.size() != rank ||
      lud.size() != rank) {
    return Failed(ffi::Error::InvalidArgument(
        "approxjax_gemm: lhs, rhs, lut and out must have one rank >= 2; got " +
        DimsString(ld) + ", " + DimsString(rd) + ", " + DimsString(lud) +
        ", " + DimsString(od)));
  }
  auto state = std::make_shared<SharedState>();
  Problem& p = state->problem;
  p.transpose_lhs = transpose_lhs;
  p.transpose_rhs = transpose_rhs;
  p.m_rows = transpose_lhs ? ld[rank - 1] : ld[rank - 2];
  p.depth = transpose_lhs ? ld[rank - 2] : ld[rank - 1];
  const int64_t k2 = transpose_rhs ? rd[rank - 1] : rd[rank - 2];
  p.n_cols = transpose_rhs ? rd[rank - 2] : rd[rank - 1];
  if (k2 != p.depth || od[rank - 2] != p.m_rows || od[rank - 1] != p.n_cols) {
    return Failed(ffi::Error::InvalidArgument(
        "approxjax_gemm: inconsistent shapes lhs " + DimsString(ld) + ", rhs " +
        DimsString(rd) + ", out " + DimsString(od)));
  }
  const int64_t lut_side = lud[rank - 1];
  int m = 0;
  while (m <= kMaxMantissaBits && (int64_t{1} << m) < lut_side) ++m;
  if (lud[rank - 2] != lut_side || (int64_t{1} << m) != lut_side ||
      m > kMaxMantissaBits) {
    return Failed(ffi::Error::InvalidArgument(
        "approxjax_gemm: lut must be (2**m, 2**m) with 0 <= m <= 12; got " +
        DimsString(lud)));
  }
  p.m = m;
  p.out_lead.assign(od.begin(), od.end() - 2);
  p.batch = 1;
  for (int64_t d : p.out_lead) p.batch *= d;
  if (auto e = LeadStrides("lhs", ld, p.out_lead, &p.a); e.failure()) {
    return Failed(e);
  }
  if (auto e = LeadStrides("rhs", rd, p.out_lead, &p.b); e.failure()) {
    return Failed(e);
  }
  if (auto e = LeadStrides("lut", lud, p.out_lead, &p.l); e.failure()) {
    return Failed(e);
  }
  p.lhs = lhs.typed_data();
  p.rhs = rhs.typed_data();
  p.lut = lut.typed_data();
  p.out = out->typed_data();
  const int64_t out_elems = p.batch * p.m_rows * p.n_cols;
  if (out_elems == 0) return Done();
  if (p.depth == 0) {
    std::fill(p.out, p.out + out_elems, 0.0f);
    return Done();
  }

  // Validate every table and find the exponent range of its entries.
  int lo = 0, hi = 0;
  bool any = false;
  const int64_t lut_elems = p.l.matrix_count << (2 * m);
  for (int64_t e = 0; e < lut_elems; ++e) {
    const float v = p.lut[e];
    const uint32_t bits = FloatBits(v);
    if (!std::isfinite(v) || (bits & kSignMask)) {
      return Failed(ffi::Error::InvalidArgument(
          "approxjax_gemm: lut entries must be finite and >= +0.0; entry " +
          std::to_string(e) + " is " + std::to_string(v)));
    }
    if (bits == 0) continue;
    const LutEntry le = SplitLutEntry(v);
    const int x = le.exp - 127;
    lo = any ? std::min(lo, x) : x;
    hi = any ? std::max(hi, x) : x;
    any = true;
  }
  p.range = RegularExponentRange(lo, hi);

  p.kernels = &SelectKernels();
  p.table = m <= kMaxTableBits;
  p.swap = p.table && p.n_cols > p.m_rows;
  const int64_t lhs_rs = transpose_lhs ? 1 : p.depth;
  const int64_t lhs_ks = transpose_lhs ? p.m_rows : 1;
  const int64_t rhs_ks = transpose_rhs ? 1 : p.n_cols;
  const int64_t rhs_cs = transpose_rhs ? p.depth : 1;
  if (!p.swap) {
    p.rows = p.m_rows, p.cols = p.n_cols;
    p.s_data = p.lhs, p.t_data = p.rhs;
    p.s_op = &p.a, p.t_op = &p.b;
    p.s_rs = lhs_rs, p.s_ks = lhs_ks, p.t_ks = rhs_ks, p.t_cs = rhs_cs;
  } else {
    p.rows = p.n_cols, p.cols = p.m_rows;
    p.s_data = p.rhs, p.t_data = p.lhs;
    p.s_op = &p.b, p.t_op = &p.a;
    p.s_rs = rhs_cs, p.s_ks = rhs_ks, p.t_ks = lhs_ks, p.t_cs = lhs_rs;
  }

  try {
    // Pack the streamed operand once for every multiplier of the batch.
    const int64_t s_count = p.s_op->matrix_count;
    const int64_t s_elems = s_count * p.rows * p.depth;
    p.idx = AllocateAligned<uint16_t>(s_elems);
    p.scale = AllocateAligned<float>(s_elems);
    p.row_irregular.assign(s_count * p.rows, 0);
    for (int64_t sm = 0; sm < s_count; ++sm) {
      const int64_t off = sm * p.rows * p.depth;
      p.kernels->pack_rows(p.s_data + off, p.rows, p.depth, p.s_rs, p.s_ks,
                           m, p.range, p.idx.get() + off, p.scale.get() + off,
                           p.row_irregular.data() + sm * p.rows);
    }
    const int64_t t_count = p.t_op->matrix_count;
    p.col_irregular.assign(t_count * p.cols, 0);
    for (int64_t tm = 0; tm < t_count; ++tm) {
      const float* base = p.t_data + tm * p.depth * p.cols;
      uint8_t* flags = p.col_irregular.data() + tm * p.cols;
      for (int64_t k = 0; k < p.depth; ++k) {
        for (int64_t c = 0; c < p.cols; ++c) {
          const uint32_t bits = FloatBits(base[k * p.t_ks + c * p.t_cs]);
          const int e = BiasedExponent(bits);
          flags[c] |= !(e == 0 || (e != 255 && e >= 127 - p.range &&
                                   e <= 127 + p.range));
        }
      }
    }
  } catch (const std::bad_alloc&) {
    return Failed(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                             "approxjax_gemm: out of memory packing operands"));
  }

  const int64_t size = int64_t{1} << m;
  if (p.table && !p.swap) {
    p.lut_t.resize(lut_elems);
    for (int64_t t = 0; t < p.l.matrix_count; ++t) {
      const float* src = p.lut + t * size * size;
      float* dst = p.lut_t.data() + t * size * size;
      for (int64_t i = 0; i < size; ++i) {
        for (int64_t j = 0; j < size; ++j) dst[j * size + i] = src[i * size + j];
      }
    }
  }
  p.kc = p.table ? std::clamp<int64_t>(kTableFloats / (size * kBlockCols), 1,
                                       p.depth)
                 : std::min(kGatherDepth, p.depth);
  p.col_blocks = (p.cols + kBlockCols - 1) / kBlockCols;
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  p.row_chunk = std::min(kBlockRows, p.rows);
  p.row_chunks = (p.rows + p.row_chunk - 1) / p.row_chunk;
  // Split rows further when there are too few units to keep threads busy.
  const int64_t want = 2 * threads;
  if (p.batch * p.col_blocks * p.row_chunks < want && p.rows >= 64) {
    const int64_t chunks = std::min<int64_t>(
        (want + p.batch * p.col_blocks - 1) / (p.batch * p.col_blocks),
        p.rows / 32);
    p.row_chunk = (p.rows + chunks - 1) / chunks;
    p.row_chunks = (p.rows + p.row_chunk - 1) / p.row_chunk;
  }
  p.units = p.batch * p.col_blocks * p.row_chunks;

  // Small problems run inline; others on XLA's intra-op pool plus this thread.
  const double work = double(p.units) * p.row_chunk * kBlockCols * p.depth;
  const int64_t workers =
      work < 2e6 ? 1 : std::min<int64_t>(threads, p.units);
  state->done = ffi::CountDownPromise(workers);
  ffi::Future future(state->done);
  for (int64_t w = 1; w < workers; ++w) {
    pool.Schedule([state] { Worker(state); });
  }
  Worker(state);
  return future;
}

ffi::Error ApproxMultiplyImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                              ffi::Buffer<ffi::F32> lut,
                              ffi::ResultBuffer<ffi::F32> out) {
  auto ad = a.dimensions(), bd = b.dimensions(), lud = lut.dimensions(),
       od = out->dimensions();
  const size_t rank = od.size();
  if (rank < 1 || ad.size() != rank || bd.size() != rank ||
      lud.size() != rank + 1) {
    return ffi::Error::InvalidArgument(
        "approxjax_multiply: a, b, out must have one rank >= 1 and lut one "
        "more; got " +
        DimsString(ad) + ", " + DimsString(bd) + ", " + DimsString(lud) +
        ", " + DimsString(od));
  }
  const int64_t n = od[rank - 1];
  const int64_t side = lud[rank];
  int m = 0;
  while (m <= kMaxMantissaBits && (int64_t{1} << m) < side) ++m;
  if (ad[rank - 1] != n || bd[rank - 1] != n || lud[rank - 1] != side ||
      (int64_t{1} << m) != side || m > kMaxMantissaBits) {
    return ffi::Error::InvalidArgument(
        "approxjax_multiply: inconsistent shapes a " + DimsString(ad) +
        ", b " + DimsString(bd) + ", lut " + DimsString(lud) + ", out " +
        DimsString(od));
  }
  std::vector<int64_t> lead(od.begin(), od.end() - 1);
  Operand oa, ob, ol;
  if (auto e = LeadStrides("a", ad, lead, &oa); e.failure()) return e;
  if (auto e = LeadStrides("b", bd, lead, &ob); e.failure()) return e;
  if (auto e = LeadStrides("lut", lud, lead, &ol); e.failure()) return e;
  int64_t batch = 1;
  for (int64_t d : lead) batch *= d;
  const int64_t lut_elems = ol.matrix_count << (2 * m);
  const float* lp = lut.typed_data();
  for (int64_t e = 0; e < lut_elems; ++e) {
    if (!std::isfinite(lp[e]) || (FloatBits(lp[e]) & kSignMask)) {
      return ffi::Error::InvalidArgument(
          "approxjax_multiply: lut entries must be finite and >= +0.0; entry " +
          std::to_string(e) + " is " + std::to_string(lp[e]));
    }
  }
  for (int64_t g = 0; g < batch; ++g) {
    int64_t rest = g, xa = 0, xb = 0, xl = 0;
    for (int d = static_cast<int>(lead.size()) - 1; d >= 0; --d) {
      const int64_t i = rest % lead[d];
      rest /= lead[d];
      xa += i * oa.lead_stride[d];
      xb += i * ob.lead_stride[d];
      xl += i * ol.lead_stride[d];
    }
    const float* pa = a.typed_data() + xa * n;
    const float* pb = b.typed_data() + xb * n;
    const float* pl = lp + (xl << (2 * m));
    float* po = out->typed_data() + g * n;
    for (int64_t e = 0; e < n; ++e) po[e] = ApproxMultiply(pa[e], pb[e], pl, m);
  }
  return ffi::Error::Success();
}

}  // namespace

const char* CpuKernelName() { return SelectKernels().name; }

const KernelTable& SelectKernels() {
  static const KernelTable* chosen = [] {
    const char* force = std::getenv("APPROXJAX_CPU_KERNEL");
    std::string want = force ? force : "";
    std::transform(want.begin(), want.end(), want.begin(),
                   [](unsigned char c) { return std::tolower(c); });
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    const bool avx2 =
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f");
    if (want == "baseline") return &KernelsBaseline();
    if (want == "avx2" && avx2) return &KernelsAvx2();
    if (want == "avx512" && avx512) return &KernelsAvx512();
    if (want.empty() && avx2) return &KernelsAvx2();
#endif
    return &KernelsBaseline();
  }();
  return *chosen;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ApproxGemmCpu, ApproxGemmImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  // lhs [..., M, K] (or [..., K, M])
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  // rhs [..., K, N] (or [..., N, K])
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  // lut [..., 2**m, 2**m]
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  // out [..., M, N]
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  // lhs stored as [..., K, M]
                                  .Attr<bool>("transpose_lhs")
                                  // rhs stored as [..., N, K]
                                  .Attr<bool>("transpose_rhs"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ApproxMultiplyCpu, ApproxMultiplyImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a [..., n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b [..., n]
                                  // lut [..., 2**m, 2**m]
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out

}  // namespace approxjax
