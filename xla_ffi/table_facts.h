// Facts about one lookup table, computed once where the table is made (the
// FFI target "approxjax_analyze_lut", run when a Multiplier is built) and
// handed to every GEMM that uses it as a uint32 operand of FactsWords(m)
// words per table, instead of rescanning the table on every call:
//
//   header  kFactsHeader words: magic, version, m, flags, the regular
//           exponent range of the table and of its separable factors, the
//           base of its byte codes, the most significant bits of an entry
//           (1 to 24), and kFactsSamples entries of the table
//           (so a GEMM can check that the facts belong to its table);
//   f, g    2**m floats each: separable factors, lut[i, j] == f[i] * g[j]
//           (or float32(f[i] * g[j]) when rounded), where kSeparable;
//   planes  (m <= kCompactMaxBits) PackPlanes of lut and of lut^T;
//   codes   (m <= kCompactMaxBits) PackCodes of lut and of lut^T.
//
// Every section starts at a multiple of 16 words (64 bytes).
#ifndef APPROXJAX_TABLE_FACTS_H_
#define APPROXJAX_TABLE_FACTS_H_

#include <cstdint>
#include <cstring>
#include <string>

#include "approx_multiply.h"
#include "gemm_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace approxjax {

constexpr uint32_t kFactsMagic = 0x464a5041u;  // "APJF"
constexpr uint32_t kFactsVersion = 2;
constexpr int64_t kFactsHeader = 32;
constexpr int kFactsSamples = 8;

enum FactsFlags : uint32_t {
  kBfloat16Exact = 1u << 0,  // every entry's lower 16 bits are zero
  kSeparable = 1u << 1,      // f and g hold factors
  kRounded = 1u << 2,        // ... that factor after one rounding
  kPlanes = 1u << 3,         // planes hold PackPlanes (compact tables)
  kCodes = 1u << 4,          // codes hold PackCodes (code base in the header)
};

inline int64_t Align16(int64_t words) { return (words + 15) / 16 * 16; }

// Word offsets of the sections for m mantissa bits, and the total.
struct FactsLayout {
  int64_t f, g, planes, planes_t, codes, codes_t, words;
  explicit FactsLayout(int m) {
    const int64_t size = int64_t{1} << m;
    f = kFactsHeader;
    g = f + Align16(size);
    const int64_t after = g + Align16(size);
    if (m <= kCompactMaxBits) {
      const int64_t plane_words = Align16(size * kPlaneRow / 2);
      const int64_t code_words = Align16(size * kCodeRow / 4);
      planes = after;
      planes_t = planes + plane_words;
      codes = planes_t + plane_words;
      codes_t = codes + code_words;
      words = codes_t + code_words;
    } else {
      planes = planes_t = codes = codes_t = -1;
      words = after;
    }
  }
};

inline int64_t FactsWords(int m) { return FactsLayout(m).words; }

// Entry positions sampled into the header (spread over the table).
inline int64_t FactsSample(int m, int s) {
  const int64_t n = int64_t{1} << (2 * m);
  return (n - 1) * s / (kFactsSamples - 1);
}

// A read-only view of one table's facts.
class TableFacts {
 public:
  TableFacts(const uint32_t* words, int m) : w_(words), m_(m), layout_(m) {}

  // Whether these are facts of `lut` (magic, version, m and the samples).
  bool BelongTo(const float* lut) const {
    if (w_[0] != kFactsMagic || w_[1] != kFactsVersion ||
        w_[2] != static_cast<uint32_t>(m_)) {
      return false;
    }
    for (int s = 0; s < kFactsSamples; ++s) {
      if (w_[8 + s] != FloatBits(lut[FactsSample(m_, s)])) return false;
    }
    return true;
  }
  uint32_t flags() const { return w_[3]; }
  bool has(uint32_t flag) const { return (flags() & flag) != 0; }
  // The regular exponent range of the table (RegularExponentRange).
  int range() const { return static_cast<int32_t>(w_[4]); }
  // The range narrowed so that the transformed operands stay normal.
  int separable_range() const { return static_cast<int32_t>(w_[5]); }
  int code_base() const { return static_cast<int32_t>(w_[6]); }
  // The most significant bits of any entry: the precision of every product
  // the table forms (a scale is a power of two).
  int significant_bits() const { return static_cast<int32_t>(w_[7]); }
  const float* f() const { return reinterpret_cast<const float*>(w_ + layout_.f); }
  const float* g() const { return reinterpret_cast<const float*>(w_ + layout_.g); }
  // Planes / codes of the table read along the tabled operand's index:
  // of lut^T when `transposed` (the tabled operand is the rhs), else of lut.
  const uint16_t* planes(bool transposed) const {
    return reinterpret_cast<const uint16_t*>(
        w_ + (transposed ? layout_.planes_t : layout_.planes));
  }
  const uint8_t* codes(bool transposed) const {
    return reinterpret_cast<const uint8_t*>(
        w_ + (transposed ? layout_.codes_t : layout_.codes));
  }

 private:
  const uint32_t* w_;
  int m_;
  FactsLayout layout_;
};

namespace ffi = xla::ffi;

// Writes the facts of one table (FactsWords(m) words at `facts`); an invalid
// table (an entry negative, -0.0, inf or NaN) gives InvalidArgument naming it.
ffi::Error AnalyzeTable(const KernelTable& kernels, const char* target,
                        const float* lut, int m, uint32_t* facts);

// XLA FFI handler "approxjax_analyze_lut": facts[..., FactsWords(m)] (uint32)
// of lut[..., 2**m, 2**m].
XLA_FFI_DECLARE_HANDLER_SYMBOL(AnalyzeLutCpu);

}  // namespace approxjax

#endif  // APPROXJAX_TABLE_FACTS_H_
