// approxjax_int_gemm: out[g, m, n] = sum_k lut[g][a[g, m, k]][b[g, k, n]],
// integer products of operand codes looked up in an int32 table and summed
// exactly in int32 (the Python side bounds K * max|entry| below 2**31, and
// this handler checks it again). Operands are table indices (uint16: the
// operand code's bits, two's complement for signed codes); each leading
// dimension of lhs, rhs and lut is out's or 1 (broadcast, numpy-style: a
// stack of tables under vmap shares the operands without copies).
//
// Two inner paths (integer_kernels.h): per-tile tables (tab[k][i][c] =
// lut[i][b[k, c]] for a block of 64 columns and as many k as fit 256 KiB,
// then every row adds tab[k][a[r, k]][0..64) as one vector stream) for
// tables of up to 256 x 256 entries and outputs with at least half as many
// rows as the table, and gathers of each product from the LUT row of the
// streamed element otherwise. Tables whose entries
// fit 16 bits are held as int16 (entry - bias: bias 32768 for unsigned
// entries above 32767), others as int32.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "gemm_cpu.h"
#include "gemm_execute.h"
#include "gemm_kernels.h"
#include "integer_kernels.h"
#include "shapes.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace approxjax {
namespace {

// The bytes of a worker's per-tile tables (k of them per pass over the
// rows; the pass also reads and writes the rows' sums of the block). The
// paired AVX-512 sweep (VNNI) takes half the L2 (1024^3 8-bit GEMM on a
// 2-core Zen 4 with 1 MiB of L2, medians of alternated runs: 128 KiB 41 ms,
// 256 KiB 29, 384-1024 KiB 24-26); the others 256 KiB (AVX2 on the same
// machine: 256 KiB 37 ms, 384-640 KiB 39-40).
int64_t TableBudget(const IntegerWays& ways) {
  constexpr int64_t kDefault = 256 * 1024;
  if (!ways.paired || !ways.words) return kDefault;  // words: AVX-512BW
#ifdef _SC_LEVEL2_CACHE_SIZE
  static const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);  // 0 or -1 where unknown
#else
  constexpr long l2 = 0;
#endif
  return l2 <= 0 ? kDefault : std::clamp<int64_t>(l2 / 2, kDefault, 1024 * 1024);
}

constexpr int64_t kMaxSide = 4096;  // 12-bit codes

ffi::Error Invalid(const std::string& what) {
  return ffi::Error::InvalidArgument("approxjax_int_gemm: " + what);
}

// The variant an option names (0: the float kernels' default, which
// APPROXJAX_CPU_KERNEL may set), or false where this CPU lacks it.
bool IntegerKernelsFor(int64_t variant, const IntegerKernelTable** out) {
  std::string name = variant == 0 ? CpuKernelName()
                     : variant == 1 ? "Baseline"
                     : variant == 2 ? "Avx2"
                     : variant == 3 ? "Avx512"
                                    : "";
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw");
  if (name == "Avx512" && avx512) {
    *out = &IntegerKernelsAvx512();
    return true;
  }
  if (name == "Avx2" && avx2) {
    *out = &IntegerKernelsAvx2();
    return true;
  }
#endif
  if (name != "Baseline") return false;
  *out = &IntegerKernelsBaseline();
  return true;
}

enum class EntryType { kI16, kI32 };

struct IntProblem {
  const uint16_t* a = nullptr;
  const uint16_t* b = nullptr;
  int32_t* out = nullptr;
  BatchShape shape;  // M, N, K; out's leading dims; lhs, rhs, lut broadcast
  int64_t side_a = 0, side_b = 0;
  int64_t tables_count = 1;
  std::vector<EntryType> types;  // per table
  std::vector<int32_t> biases;   // per table (16-bit tables: entry - bias)
  std::vector<int16_t> t16;      // tables held as int16
  std::vector<uint8_t> planes;   // their byte planes (ways.bytes)
  std::vector<int16_t> columns;  // their columns as rows (ways.columns)
  const int32_t* lut = nullptr;
  bool tables = true;
  IntegerWays ways;
  int64_t kb = 1, nblocks = 1, chunks = 1, chunk_rows = 0, units = 0;
  const IntegerKernelTable* kernels = nullptr;
};

struct IntState {
  std::unique_ptr<IntProblem> problem;
  std::atomic<int64_t> next{0};
  ffi::CountDownPromise done;
};

// A worker's per-tile table, at a 64-byte boundary (whole cache lines per
// table row), kept between calls.
struct TableScratch {
  std::vector<char> raw;
  template <typename E>
  E* Get(int64_t elems) {
    raw.resize(static_cast<size_t>(elems) * sizeof(E) + 64);
    const auto at = reinterpret_cast<uintptr_t>(raw.data());
    return reinterpret_cast<E*>((at + 63) & ~uintptr_t{63});
  }
};

template <typename E>
void RunBlock(const IntProblem& p, const IntegerBlockKernels<E>& kern,
              const E* lut, TableSources sources, int32_t bias, int64_t g,
              int64_t r0, int64_t rows, int64_t n0, int64_t ncols,
              TableScratch& scratch) {
  const int64_t ga = MatrixOffset(g, p.shape.out_lead, p.shape.a);
  const int64_t gb = MatrixOffset(g, p.shape.out_lead, p.shape.b);
  const uint16_t* a = p.a + (ga * p.shape.m_rows + r0) * p.shape.depth;
  const uint16_t* b = p.b + gb * p.shape.depth * p.shape.n_cols + n0;
  int32_t* out = p.out + (g * p.shape.m_rows + r0) * p.shape.n_cols + n0;
  if (!p.tables) {
    kern.gather(out, p.shape.n_cols, rows, a, p.shape.depth, p.shape.depth, lut, p.side_b, b,
                p.shape.n_cols, ncols, true, bias);
    return;
  }
  E* tab = scratch.Get<E>(p.kb * p.side_a * kIntCols);
  for (int64_t k0 = 0; k0 < p.shape.depth; k0 += p.kb) {
    const int64_t kc = std::min(p.kb, p.shape.depth - k0);
    kern.build(tab, lut, sources, p.side_a, p.side_b, b + k0 * p.shape.n_cols,
               p.shape.n_cols, kc, ncols, p.ways);
    kern.sweep(out, p.shape.n_cols, rows, a + k0, p.shape.depth, kc, tab, p.side_a,
               ncols, k0 == 0, bias, p.ways);
  }
}

void RunUnit(const IntProblem& p, int64_t u) {
  thread_local TableScratch scratch;
  const int64_t g = u / (p.nblocks * p.chunks);
  const int64_t rest = u % (p.nblocks * p.chunks);
  const int64_t nb = rest / p.chunks, ch = rest % p.chunks;
  const int64_t r0 = ch * p.chunk_rows;
  const int64_t rows = std::min(p.chunk_rows, p.shape.m_rows - r0);
  const int64_t n0 = nb * kIntCols;
  const int64_t ncols = std::min<int64_t>(kIntCols, p.shape.n_cols - n0);
  if (rows <= 0) return;
  const int64_t size = p.side_a * p.side_b;
  const int64_t gl = MatrixOffset(g, p.shape.out_lead, p.shape.l);
  if (p.types[gl] == EntryType::kI16) {
    TableSources sources;
    if (!p.planes.empty()) sources.planes = p.planes.data() + gl * p.side_a * 512;
    if (!p.columns.empty()) {
      sources.columns = p.columns.data() + gl * p.side_b * ColumnStride(p.side_a);
    }
    RunBlock(p, p.kernels->i16, p.t16.data() + gl * size, sources, p.biases[gl],
             g, r0, rows, n0, ncols, scratch);
  } else {
    RunBlock(p, p.kernels->i32, p.lut + gl * size, TableSources{}, 0, g, r0,
             rows, n0, ncols, scratch);
  }
}

void IntWorker(const std::shared_ptr<IntState>& state) {
  const IntProblem& p = *state->problem;
  try {
    for (int64_t u = state->next.fetch_add(1); u < p.units;
         u = state->next.fetch_add(1)) {
      RunUnit(p, u);
    }
  } catch (const std::bad_alloc&) {
    state->done.CountDown(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                                     "approxjax_int_gemm: out of memory"));
    return;
  }
  state->done.CountDown();
}

// The largest index of n codes (a scan, so that no table is read out of range).
uint16_t MaxIndex(const uint16_t* x, int64_t n) {
  uint16_t hi = 0;
  for (int64_t e = 0; e < n; ++e) hi = x[e] > hi ? x[e] : hi;
  return hi;
}

ffi::Future IntGemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U16> lhs,
                        ffi::Buffer<ffi::U16> rhs, ffi::Buffer<ffi::S32> lut,
                        ffi::ResultBuffer<ffi::S32> out, int64_t variant,
                        int64_t gemm, bool pairs, bool bytes,
                        bool huge_pages) {
  try {
    const auto ld = lhs.dimensions(), rd = rhs.dimensions(),
               td = lut.dimensions(), od = out->dimensions();
    auto p = std::make_unique<IntProblem>();
    if (auto e = CheckIntGemm("approxjax_int_gemm", ld, rd, &td, od, &p->shape);
        e.failure()) {
      return Failed(std::move(e));
    }
    const int64_t count_a = p->shape.a.matrix_count, count_b = p->shape.b.matrix_count;
    p->tables_count = p->shape.l.matrix_count;
    p->side_a = td[td.size() - 2];
    p->side_b = td[td.size() - 1];
    if (p->side_a < 1 || p->side_a > kMaxSide || p->side_b < 1 ||
        p->side_b > kMaxSide) {
      return Failed(Invalid("table sides must be 1..4096; got " + DimsString(td)));
    }
    if (!IntegerKernelsFor(variant, &p->kernels)) {
      return Failed(Invalid("kernel variant " + std::to_string(variant) +
                                " (1 baseline, 2 AVX2, 3 AVX-512) is not available "
                                "on this CPU"));
    }
    if (gemm < 0 || gemm > 2) {
      return Failed(Invalid("gemm must be 0 (auto), 1 (tables) or 2 (gathers); got " +
                                std::to_string(gemm)));
    }
    const int64_t out_elems = p->shape.batch * p->shape.m_rows * p->shape.n_cols;
    if (out_elems == 0) return Done();
    p->out = out->typed_data();
    if (p->shape.depth == 0) {
      std::fill(p->out, p->out + out_elems, 0);
      return Done();
    }
    p->a = lhs.typed_data();
    p->b = rhs.typed_data();
    p->lut = lut.typed_data();
    const int64_t na = count_a * p->shape.m_rows * p->shape.depth;
    const int64_t nbk = count_b * p->shape.depth * p->shape.n_cols;
    if (MaxIndex(p->a, na) >= p->side_a || MaxIndex(p->b, nbk) >= p->side_b) {
      return Failed(Invalid(
          "an operand code is outside the multiplier's code range (its index "
          "is outside the table " + DimsString(td) + ")"));
    }
    // Entry types, and the bound on the sums.
    const int64_t size = p->side_a * p->side_b;
    p->types.resize(p->tables_count);
    p->biases.assign(p->tables_count, 0);
    bool narrow = false;
    for (int64_t g = 0; g < p->tables_count; ++g) {
      const int32_t* t = p->lut + g * size;
      int64_t lo = 0, hi = 0;
      for (int64_t e = 0; e < size; ++e) {
        lo = std::min<int64_t>(lo, t[e]);
        hi = std::max<int64_t>(hi, t[e]);
      }
      if (p->shape.depth * std::max(-lo, hi) > std::numeric_limits<int32_t>::max()) {
        return Failed(Invalid(
            "K = " + std::to_string(p->shape.depth) + " sums of entries up to " +
            std::to_string(std::max(-lo, hi)) + " may overflow int32"));
      }
      const bool fits = lo >= -32768 && hi <= 32767;
      const bool fits_biased = lo >= 0 && hi <= 65535;
      p->types[g] = fits || fits_biased ? EntryType::kI16 : EntryType::kI32;
      p->biases[g] = fits ? 0 : fits_biased ? 32768 : 0;
      narrow = narrow || p->types[g] != EntryType::kI32;
    }
    if (narrow) {
      p->t16.resize(static_cast<size_t>(p->tables_count * size));
      for (int64_t g = 0; g < p->tables_count; ++g) {
        if (p->types[g] == EntryType::kI32) continue;
        const int32_t* t = p->lut + g * size;
        int16_t* d = p->t16.data() + g * size;
        const int32_t bias = p->biases[g];
        for (int64_t e = 0; e < size; ++e) d[e] = static_cast<int16_t>(t[e] - bias);
      }
    }
    p->ways = p->kernels->ways(pairs, bytes);
    // Tables where enough rows share them and they are built by vector
    // permutes (AVX-512) or transposes (AVX2, 16-bit tables), else gathers.
    // Measured: tables of more than 256 rows or columns lose to gathers at
    // 10 and 12 bits; tables built by scalar gathers (the baseline, and
    // int32 tables without AVX-512: ~2 ns an entry on a 2-core EPYC) lose to
    // gathers at every measured 8-bit shape up to 12800 x 150 x 64 and 1024^3
    // (benchmarks/RESULTS.md).
    const bool vector_builds =
        p->ways.bytes || p->ways.words ||
        (p->ways.columns &&
         std::find(p->types.begin(), p->types.end(), EntryType::kI32) == p->types.end());
    p->tables = gemm == 1 || (gemm == 0 && vector_builds && p->side_a <= 256 &&
                              p->side_b <= 256 && 2 * p->shape.m_rows >= p->side_a);
    // What the tables are built from, only where there are tables.
    if (p->tables && narrow && p->ways.bytes && p->side_b <= 256) {
      p->planes.assign(static_cast<size_t>(p->tables_count * p->side_a * 512), 0);
      for (int64_t g = 0; g < p->tables_count; ++g) {
        if (p->types[g] != EntryType::kI16) continue;
        BytePlanes(p->t16.data() + g * size, p->side_a, p->side_b,
                   p->planes.data() + g * p->side_a * 512);
      }
    }
    const int64_t stride = ColumnStride(p->side_a);
    if (p->tables && narrow && p->ways.columns && p->side_a <= 256) {
      p->columns.assign(static_cast<size_t>(p->tables_count * p->side_b * stride), 0);
      for (int64_t g = 0; g < p->tables_count; ++g) {
        if (p->types[g] != EntryType::kI16) continue;
        LutColumns(p->t16.data() + g * size, p->side_a, p->side_b,
                   p->columns.data() + g * p->side_b * stride);
      }
    }
    int64_t entry = 4;
    for (EntryType t : p->types) entry = t == EntryType::kI32 ? 4 : std::min<int64_t>(entry, 2);
    p->kb = std::max<int64_t>(1, TableBudget(p->ways) / (p->side_a * kIntCols * entry));
    p->nblocks = (p->shape.n_cols + kIntCols - 1) / kIntCols;
    const int64_t threads = std::max<int64_t>(1, pool.num_threads());
    p->chunks = 1;
    while (p->shape.batch * p->nblocks * p->chunks < 2 * threads &&
           p->shape.m_rows / (2 * p->chunks) >= 128) {
      p->chunks *= 2;
    }
    p->chunk_rows = (p->shape.m_rows + p->chunks - 1) / p->chunks;
    p->units = p->shape.batch * p->nblocks * p->chunks;
    // A stack's outputs are large (eight 1024 x 1024 outputs, 32 MiB): their
    // first touch faulted every 4 KiB page, a tenth of the call's time.
    if (huge_pages) AdviseHugePages(p->out, out_elems * static_cast<int64_t>(sizeof(int32_t)));
    const int64_t workers = std::min(threads, p->units);
    auto state = std::make_shared<IntState>();
    state->problem = std::move(p);
    return RunOnWorkers(pool, state, workers, IntWorker);
  } catch (const std::bad_alloc&) {
    return Failed(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                                 "approxjax_int_gemm: out of memory"));
  } catch (const std::exception& e) {
    return Failed(ffi::Error::Internal(std::string("approxjax_int_gemm: ") + e.what()));
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IntegerGemmCpu, IntGemmImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U16>>()  // lhs [..., M, K]
                                  .Arg<ffi::Buffer<ffi::U16>>()  // rhs [..., K, N]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // lut [..., A, B]
                                  .Ret<ffi::Buffer<ffi::S32>>()  // out [..., M, N]
                                  .Attr<int64_t>("variant")
                                  .Attr<int64_t>("gemm")
                                  // sum two k per instruction (VNNI)
                                  .Attr<bool>("pairs")
                                  // byte-permute table builds (VBMI)
                                  .Attr<bool>("bytes")
                                  // MADV_HUGEPAGE on large outputs
                                  .Attr<bool>("huge_pages"));

}  // namespace approxjax
