// The XLA FFI handlers of the CPU GEMMs and the elementwise multiply: they
// check the operands (shapes.h), decode the options and hand the problem to
// gemm_execute.cc. Nothing here throws across the FFI boundary.
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <new>
#include <string>

#include "approx_multiply.h"
#include "attribute_decoding.h"
#include "gemm_cpu.h"
#include "gemm_execute.h"
#include "gemm_kernels.h"
#include "shapes.h"
#include "table_facts.h"

namespace ffi = xla::ffi;

namespace approxjax {
namespace {

// The noise operand: two words per table, beside lut (its leading dims).
ffi::Error CheckNoise(const char* target, ffi::Span<const int64_t> lud,
                      ffi::Span<const int64_t> nd) {
  bool ok = nd.size() + 1 == lud.size() && nd[nd.size() - 1] == 2;
  for (size_t d = 0; ok && d + 2 < lud.size(); ++d) ok = nd[d] == lud[d];
  if (!ok) {
    return ffi::Error::InvalidArgument(
        std::string(target) + ": noise must be (..., 2) beside lut " +
        DimsString(lud) + "; got " + DimsString(nd));
  }
  return ffi::Error::Success();
}

// A C adder only where the caller made one (its address is in the process).
ffi::Error CheckArithmetic(const char* target, const ArithmeticSpec& a) {
  if (a.adder == 2 && a.adder_address == 0) {
    return ffi::Error::InvalidArgument(std::string(target) +
                                       ": a C adder without its function");
  }
  if (a.acc_m < 0 || a.acc_m > 23 || a.prod_m < 0 || a.prod_m > 23 ||
      a.loa_bits < 0 || a.loa_bits > 23) {
    return ffi::Error::InvalidArgument(std::string(target) +
                                       ": arithmetic out of range");
  }
  return ffi::Error::Success();
}

bool CpuHas(const char* feature) {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  // The AVX2 variant uses F16C too (every CPU with AVX2 and FMA has it).
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (std::string(feature) == "avx2") return avx2;
  return avx2 &&
         __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#else
  (void)feature;
  return false;
#endif
}

// The variant an option names (0: the default), or an error where this CPU
// or build lacks it.
ffi::Error KernelsFor(int64_t variant, const char* target,
                      const KernelTable** kernels) {
  switch (variant) {
    case 0:
      *kernels = &SelectKernels();
      return ffi::Error::Success();
    case 1:
      *kernels = &KernelsBaseline();
      return ffi::Error::Success();
#if defined(__x86_64__) || defined(_M_X64)
    case 2:
      if (CpuHas("avx2")) {
        *kernels = &KernelsAvx2();
        return ffi::Error::Success();
      }
      break;
    case 3:
      if (CpuHas("avx512")) {
        *kernels = &KernelsAvx512();
        return ffi::Error::Success();
      }
      break;
#endif
    default:
      break;
  }
  return ffi::Error::InvalidArgument(
      std::string(target) + ": kernel variant " + std::to_string(variant) +
      " (1 baseline, 2 AVX2, 3 AVX-512) is not available on this CPU");
}

// The facts operand: facts[..., FactsWords(m)] with the lut's leading dims.
ffi::Error CheckFacts(const char* target, ffi::Span<const int64_t> lud,
                      ffi::Span<const int64_t> fd, int m) {
  const int64_t words = FactsWords(m);
  bool ok = fd.size() + 1 == lud.size() && fd[fd.size() - 1] == words;
  for (size_t d = 0; ok && d + 2 < lud.size(); ++d) ok = fd[d] == lud[d];
  if (!ok) {
    return ffi::Error::InvalidArgument(
        std::string(target) + ": facts must be (..., " + std::to_string(words) +
        ") beside lut " + DimsString(lud) + "; got " + DimsString(fd));
  }
  return ffi::Error::Success();
}

// The checks both GEMM handlers make once their shapes are known: the
// table's facts, the noise operand, the arithmetic, and the kernels of the
// chosen instruction-set variant.
ffi::Error CheckTablesAndKernels(const char* target, ffi::Span<const int64_t> lud,
                                 ffi::Span<const int64_t> fd,
                                 ffi::Span<const int64_t> nd, int m,
                                 const ArithmeticSpec& arithmetic,
                                 const GemmOptions& options,
                                 const KernelTable** kernels) {
  if (auto e = CheckFacts(target, lud, fd, m); e.failure()) return e;
  if (auto e = CheckNoise(target, lud, nd); e.failure()) return e;
  if (auto e = CheckArithmetic(target, arithmetic); e.failure()) return e;
  return KernelsFor(options.variant, target, kernels);
}

void SetOperands(const BatchShape& shape, Problem* p) {
  p->m_rows = shape.m_rows;
  p->n_cols = shape.n_cols;
  p->depth = shape.depth;
  p->m = shape.m;
  p->out_lead = shape.out_lead;
  p->batch = shape.batch;
  p->a = shape.a;
  p->b = shape.b;
  p->l = shape.l;
  p->facts_words = FactsWords(shape.m);
}

ffi::Future ApproxGemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> lhs,
                           ffi::Buffer<ffi::F32> rhs, ffi::Buffer<ffi::F32> lut,
                           ffi::Buffer<ffi::U32> facts,
                           ffi::Buffer<ffi::U32> noise,
                           ffi::ResultBuffer<ffi::F32> out, bool transpose_lhs,
                           bool transpose_rhs, GemmOptions options,
                           ArithmeticSpec arithmetic) {
  const char* target = "approxjax_gemm";
  try {
    BatchShape shape;
    if (auto e = CheckGemm(lhs.dimensions(), rhs.dimensions(), lut.dimensions(),
                           out->dimensions(), transpose_lhs, transpose_rhs,
                           &shape);
        e.failure()) {
      return Failed(e);
    }
    const KernelTable* kernels;
    if (auto e = CheckTablesAndKernels(target, lut.dimensions(), facts.dimensions(),
                                       noise.dimensions(), shape.m, arithmetic,
                                       options, &kernels);
        e.failure()) {
      return Failed(e);
    }
    auto p = std::make_unique<Problem>();
    SetOperands(shape, p.get());
    p->accumulator = MakeAccumulator(arithmetic, 0);
    p->noise = noise.typed_data();
    p->transpose_lhs = transpose_lhs;
    p->transpose_rhs = transpose_rhs;
    p->lhs = lhs.typed_data();
    p->rhs = rhs.typed_data();
    p->lut = lut.typed_data();
    p->facts = facts.typed_data();
    p->out = out->typed_data();
    p->lhs_matrix = p->m_rows * p->depth;
    return RunGemm(std::move(p), pool, options, *kernels, target);
  } catch (const std::bad_alloc&) {
    return Failed(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                             std::string(target) + ": out of memory"));
  }
}

ffi::Future ApproxConvGemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                               ffi::Buffer<ffi::F32> rhs,
                               ffi::Buffer<ffi::F32> lut,
                               ffi::Buffer<ffi::U32> facts,
                               ffi::Buffer<ffi::U32> noise,
                               ffi::ResultBuffer<ffi::F32> out,
                               ffi::Span<const int64_t> kernel,
                               ffi::Span<const int64_t> strides,
                               ffi::Span<const int64_t> dilation,
                               bool transpose_lhs, GemmOptions options,
                               ArithmeticSpec arithmetic) {
  const char* target = "approxjax_conv_gemm";
  try {
    auto p = std::make_unique<Problem>();
    if (auto e = CheckConvGemm(x.dimensions(), rhs.dimensions(),
                               lut.dimensions(), out->dimensions(), kernel,
                               strides, dilation, transpose_lhs, &p->geometry);
        e.failure()) {
      return Failed(e);
    }
    const KernelTable* kernels;
    if (auto e = CheckTablesAndKernels(target, lut.dimensions(), facts.dimensions(),
                                       noise.dimensions(), p->geometry.gemm.m,
                                       arithmetic, options, &kernels);
        e.failure()) {
      return Failed(e);
    }
    p->conv = true;
    const int64_t c = p->geometry.channels;
    for (size_t t = 0; t < p->geometry.tap_off.size() && c > 0; ++t) {
      const int64_t off = p->geometry.tap_off[t];
      if (!p->runs.empty() && p->runs.back().off + p->runs.back().len == off) {
        p->runs.back().len += c;
      } else {
        p->runs.push_back({static_cast<int64_t>(t) * c, off, c});
      }
    }
    SetOperands(p->geometry.gemm, p.get());
    p->accumulator = MakeAccumulator(arithmetic, 0);
    p->noise = noise.typed_data();
    p->transpose_lhs = transpose_lhs;
    p->transpose_rhs = false;
    p->lhs_matrix = p->geometry.images * p->geometry.image;
    p->lhs = x.typed_data();
    p->rhs = rhs.typed_data();
    p->lut = lut.typed_data();
    p->facts = facts.typed_data();
    p->out = out->typed_data();
    return RunGemm(std::move(p), pool, options, *kernels, target);
  } catch (const std::bad_alloc&) {
    return Failed(ffi::Error(ffi::ErrorCode::kResourceExhausted,
                             std::string(target) + ": out of memory"));
  }
}

ffi::Error ApproxMultiplyImpl(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                              ffi::Buffer<ffi::F32> lut,
                              ffi::Buffer<ffi::U32> facts,
                              ffi::ResultBuffer<ffi::F32> out) {
  const char* target = "approxjax_multiply";
  BatchShape shape;
  if (auto e = CheckMultiply(a.dimensions(), b.dimensions(), lut.dimensions(),
                             out->dimensions(), &shape);
      e.failure()) {
    return e;
  }
  if (auto e = CheckFacts(target, lut.dimensions(), facts.dimensions(), shape.m);
      e.failure()) {
    return e;
  }
  const int m = shape.m;
  const int64_t n = shape.n_cols, batch = shape.batch;
  const int64_t words = FactsWords(m), size = int64_t{1} << (2 * m);
  const float* lp = lut.typed_data();
  for (int64_t t = 0; t < shape.l.matrix_count; ++t) {
    if (!TableFacts(facts.typed_data() + t * words, m).BelongTo(lp + t * size)) {
      return ffi::Error::InvalidArgument(
          std::string(target) + ": the facts of table " + std::to_string(t) +
          " do not belong to it");
    }
  }
  for (int64_t g = 0; g < batch; ++g) {
    int64_t xa, xb, xl;
    BatchOffsets(g, shape.out_lead, shape.a, shape.b, shape.l, &xa, &xb, &xl);
    const float* pa = a.typed_data() + xa * n;
    const float* pb = b.typed_data() + xb * n;
    const float* pl = lp + xl * size;
    float* po = out->typed_data() + g * n;
    for (int64_t e = 0; e < n; ++e) po[e] = ApproxMultiply(pa[e], pb[e], pl, m);
  }
  return ffi::Error::Success();
}

}  // namespace

const char* CpuKernelName() { return SelectKernels().name; }

const KernelTable& SelectKernels() {
  // The default variant, chosen once: the widest this CPU runs, or the one
  // APPROXJAX_CPU_KERNEL=baseline|avx2|avx512 names (a documented default,
  // read once; KernelOptions(variant=...) chooses per call).
  static const KernelTable* chosen = [] {
    const char* force = std::getenv("APPROXJAX_CPU_KERNEL");
    std::string want = force ? force : "";
    std::transform(want.begin(), want.end(), want.begin(),
                   [](unsigned char c) { return std::tolower(c); });
#if defined(__x86_64__) || defined(_M_X64)
    const bool avx2 = CpuHas("avx2"), avx512 = CpuHas("avx512");
    if (want == "baseline") return &KernelsBaseline();
    if (want == "avx2" && avx2) return &KernelsAvx2();
    if (want == "avx512" && avx512) return &KernelsAvx512();
    if (want.empty() && avx512) return &KernelsAvx512();
    if (want.empty() && avx2) return &KernelsAvx2();
#endif
    return &KernelsBaseline();
  }();
  return *chosen;
}

std::string PlanDescription(const ProblemShape& shape,
                            const TableSummary& tables,
                            const GemmOptions& options, int64_t threads) {
  const KernelTable* kernels = &SelectKernels();
  if (KernelsFor(options.variant, "plan", &kernels).failure()) return "";
  return DescribePlan(
      PlanGemm(shape, tables, options, CapabilitiesOf(*kernels), threads),
      shape.conv);
}

// Both GEMM targets bind the thread pool, lhs (or the padded input x), rhs,
// lut and facts, and return out; then their attributes.
static auto BindGemm() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()   // lhs [..., M, K] or x [..., N, S.., C]
      .Arg<ffi::Buffer<ffi::F32>>()   // rhs [..., K, N]
      .Arg<ffi::Buffer<ffi::F32>>()   // lut [..., 2**m, 2**m]
      .Arg<ffi::Buffer<ffi::U32>>()   // facts [..., FactsWords(m)]
      .Arg<ffi::Buffer<ffi::U32>>()   // noise [..., 2]: stochastic seeds
      .Ret<ffi::Buffer<ffi::F32>>();  // out [..., M, N] or [..., N, P, O]
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(ApproxGemmCpu, ApproxGemmImpl,
                              BindGemm()
                                  // lhs stored as [..., K, M]
                                  .Attr<bool>("transpose_lhs")
                                  // rhs stored as [..., N, K]
                                  .Attr<bool>("transpose_rhs")
                                  // kernel choices (GemmOptions)
                                  .Attr<GemmOptions>("options")
                                  // formats and accumulator (accumulate.h)
                                  .Attr<ArithmeticSpec>("arithmetic"));

// x is the padded input; rhs [..., prod(kernel) * C, O] (shapes.h).
XLA_FFI_DEFINE_HANDLER_SYMBOL(ApproxConvGemmCpu, ApproxConvGemmImpl,
                              BindGemm()
                                  .Attr<ffi::Span<const int64_t>>("kernel")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("dilation")
                                  // out = patches^T @ rhs (weight gradient)
                                  .Attr<bool>("transpose_lhs")
                                  // kernel choices (GemmOptions)
                                  .Attr<GemmOptions>("options")
                                  // formats and accumulator (accumulate.h)
                                  .Attr<ArithmeticSpec>("arithmetic"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ApproxMultiplyCpu, ApproxMultiplyImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a [..., n]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b [..., n]
                                  // lut [..., 2**m, 2**m]
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  // facts [..., FactsWords(m)]
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out

}  // namespace approxjax
