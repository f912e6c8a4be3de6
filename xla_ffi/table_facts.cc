// The analysis of a lookup table (table_facts.h): validity, regular exponent
// range, separable factors, compact planes and codes.
#include "table_facts.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <vector>

#include "shapes.h"

namespace approxjax {
namespace {

// The most significant bits of any entry (1 to 24): 24 less the trailing
// zero bits that every entry's significand has (`ored`: their bits ORed).
int SignificantBits(uint32_t ored) {
  return 24 - __builtin_ctz((ored & 0x7fffffu) | 0x800000u);
}

// Checks every entry (finite, >= +0.0) and returns the regular exponent
// range and the most significant bits of an entry (8 or fewer: every entry
// is bfloat16-exact, its lower 16 bits zero).
ffi::Error ScanTable(const KernelTable& kernels, const char* target,
                     const float* lut, int m, int* range, int* bits) {
  int lo = 0, hi = 0;
  bool any = false;
  uint32_t low_bits = 0;
  const int64_t elems = int64_t{1} << (2 * m);
  // A branch-free pass first: where no entry is negative, non-finite or
  // subnormal, the exponent range is that of the nonzero entries' biased
  // exponent fields. Otherwise the entry-by-entry loop below.
  uint32_t odd = 0, emin = 255, emax = 0;
  kernels.scan_lut(reinterpret_cast<const uint32_t*>(lut), elems, &odd,
                   &low_bits, &emin, &emax);
  if (odd == 0) {
    if (emax > 0) {
      lo = static_cast<int>(emin) - 127;
      hi = static_cast<int>(emax) - 127;
    }
    *range = RegularExponentRange(lo, hi);
    *bits = SignificantBits(low_bits);
    return ffi::Error::Success();
  }
  low_bits = 0;
  for (int64_t e = 0; e < elems; ++e) {
    const float v = lut[e];
    const uint32_t bits = FloatBits(v);
    if (!std::isfinite(v) || (bits & kSignMask)) {
      return ffi::Error::InvalidArgument(
          std::string(target) +
          ": lut entries must be finite and >= +0.0; entry " +
          std::to_string(e) + " is " + std::to_string(v) +
          (bits == kSignMask ? " (-0.0)" : ""));
    }
    low_bits |= bits;
    if (bits == 0) continue;
    const int x = SplitLutEntry(v).exp - 127;
    lo = any ? std::min(lo, x) : x;
    hi = any ? std::max(hi, x) : x;
    any = true;
  }
  *range = RegularExponentRange(lo, hi);
  *bits = SignificantBits(low_bits);
  return ffi::Error::Success();
}

// Whether one LUT is separable: lut[i, j] == f[i] * g[j] exactly for normal
// f, g > 0, as for truncated(m) and DRUM, whose entries are products of the
// operands' modified significands. Then every product the model forms is
// exactly (f[i] * scale(a)) * (g[j] * scale(b)). Or, where only
// lut[i, j] == float32(f[i] * g[j]) (*rounded: truncated(12)), that product
// rounded. The factors are fixed up to a constant c: f = lut[:, 0] / c and
// g = lut[0, :] * c / lut[0, 0]. Tried: c = 1, c = lut[0, 0] and, where
// exact, c = sqrt(lut[0, 0]) (symmetric LUTs such as DRUM's, whose
// lut[0, 0] = f[0]**2 has no exact quotient by f[0] otherwise), the first
// with every f and g a normal float. Narrows *range so that the transformed
// operands stay normal.
bool FindSeparable(const KernelTable& kernels, const float* lut, int m,
                   float* f, float* g, int* range, bool* rounded) {
  const int64_t size = int64_t{1} << m;
  const double corner = lut[0];
  if (!(corner > 0)) return false;
  const double root = std::sqrt(corner);
  const double scales[] = {1.0, corner, root * root == corner ? root : 0.0};
  for (const double c : scales) {
    if (c == 0.0) continue;
    int lo = 0, hi = 0;
    const auto normal = [&](float x, bool first) {
      const int e = BiasedExponent(FloatBits(x));
      if (e == 0 || e == 255) return false;
      lo = first ? e - 127 : std::min(lo, e - 127);
      hi = first ? e - 127 : std::max(hi, e - 127);
      return true;
    };
    bool exact = true;
    for (int64_t i = 0; i < size && exact; ++i) {
      const double fi = double(lut[i * size]) / c;
      const double gi = double(lut[i]) * c / corner;
      f[i] = static_cast<float>(fi);
      g[i] = static_cast<float>(gi);
      exact = double(f[i]) == fi && double(g[i]) == gi &&
              normal(f[i], i == 0) && normal(g[i], false);
    }
    if (!exact) continue;
    *rounded = !kernels.factors_match(lut, f, g, size, false);
    if (*rounded && !kernels.factors_match(lut, f, g, size, true)) return false;
    *range = std::min({*range, 126 + lo, 127 - hi});
    return true;
  }
  return false;
}

ffi::Error AnalyzeLutImpl(ffi::Buffer<ffi::F32> lut,
                          ffi::ResultBuffer<ffi::U32> facts) {
  const char* target = "approxjax_analyze_lut";
  try {
    auto ld = lut.dimensions();
    auto fd = facts->dimensions();
    if (ld.size() < 2 || fd.size() != ld.size() - 1) {
      return ffi::Error::InvalidArgument(
          std::string(target) + ": lut must be (..., 2**m, 2**m); got " +
          DimsString(ld));
    }
    int m = 0;
    if (auto e = TableBits(target, ld, &m); e.failure()) return e;
    const int64_t words = FactsWords(m);
    if (fd[fd.size() - 1] != words) {
      return ffi::Error::InvalidArgument(
          std::string(target) + ": facts must have " + std::to_string(words) +
          " words per table for m = " + std::to_string(m) + "; got " +
          DimsString(fd));
    }
    const int64_t size = int64_t{1} << m;
    const int64_t count = lut.element_count() / (size * size);
    const KernelTable& kernels = SelectKernels();
    for (int64_t t = 0; t < count; ++t) {
      if (auto e = AnalyzeTable(kernels, target, lut.typed_data() + t * size * size,
                                m, facts->typed_data() + t * words);
          e.failure()) {
        return e;
      }
    }
    return ffi::Error::Success();
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                      std::string(target) + ": out of memory");
  }
}

}  // namespace

ffi::Error AnalyzeTable(const KernelTable& kernels, const char* target,
                        const float* lut, int m, uint32_t* facts) {
  const FactsLayout layout(m);
  std::fill(facts, facts + layout.words, 0u);
  int range = -1, bits = 24;
  if (auto e = ScanTable(kernels, target, lut, m, &range, &bits); e.failure()) {
    return e;
  }
  const bool bf16_exact = bits <= 8;
  uint32_t flags = bf16_exact ? kBfloat16Exact : 0u;
  float* f = reinterpret_cast<float*>(facts + layout.f);
  float* g = reinterpret_cast<float*>(facts + layout.g);
  int separable_range = range;
  bool rounded = false;
  if (range >= 0 &&
      FindSeparable(kernels, lut, m, f, g, &separable_range, &rounded)) {
    flags |= kSeparable | (rounded ? kRounded : 0u);
  } else {
    const int64_t size = int64_t{1} << m;
    std::fill(f, f + size, 0.0f);
    std::fill(g, g + size, 0.0f);
    separable_range = -1;
  }
  int code_base = -1;
  if (bf16_exact && m <= kCompactMaxBits) {
    const int64_t size = int64_t{1} << m;
    std::vector<float> lut_t(size * size);
    for (int64_t i = 0; i < size; ++i) {
      for (int64_t j = 0; j < size; ++j) lut_t[j * size + i] = lut[i * size + j];
    }
    PackPlanes(lut, m, reinterpret_cast<uint16_t*>(facts + layout.planes));
    PackPlanes(lut_t.data(), m,
               reinterpret_cast<uint16_t*>(facts + layout.planes_t));
    flags |= kPlanes;
    code_base = PackCodes(lut, m, reinterpret_cast<uint8_t*>(facts + layout.codes));
    if (code_base >= 0) {
      PackCodes(lut_t.data(), m,
                reinterpret_cast<uint8_t*>(facts + layout.codes_t));
      flags |= kCodes;
    }
  }
  facts[0] = kFactsMagic;
  facts[1] = kFactsVersion;
  facts[2] = static_cast<uint32_t>(m);
  facts[3] = flags;
  facts[4] = static_cast<uint32_t>(range);
  facts[5] = static_cast<uint32_t>(separable_range);
  facts[6] = static_cast<uint32_t>(code_base);
  facts[7] = static_cast<uint32_t>(bits);
  for (int s = 0; s < kFactsSamples; ++s) {
    facts[8 + s] = FloatBits(lut[FactsSample(m, s)]);
  }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AnalyzeLutCpu, AnalyzeLutImpl,
                              ffi::Ffi::Bind()
                                  // lut [..., 2**m, 2**m]
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  // facts [..., FactsWords(m)]
                                  .Ret<ffi::Buffer<ffi::U32>>());

}  // namespace approxjax
