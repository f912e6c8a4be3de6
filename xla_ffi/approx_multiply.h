// The simulated multiply of approxjax, bit for bit. This header is the one C++
// statement of the model; the CPU kernels and the CUDA kernels both include it,
// and approxjax/reference.py states the same model in pure JAX.
//
// A multiplier with m mantissa bits is a float32 table `lut` of shape
// (2**m, 2**m) with finite entries >= 0. For float32 operands a and b:
//   - NaN in either operand gives NaN;
//   - inf times zero (or subnormal) gives NaN, inf times anything else +-inf;
//   - a zero or subnormal operand gives a zero whose sign is sign(a)^sign(b);
//   - otherwise, with a = (-1)**sa * 1.fa * 2**ea and likewise for b, and i, j
//     the top m bits of fa and fb, the product is
//       (-1)**(sa^sb) * lut[i, j] * 2**(ea + eb)
//     scaled exactly; a magnitude >= 2**128 gives +-inf and one below the
//     smallest normal float32 (2**-126) gives a signed zero.
#ifndef APPROXJAX_APPROX_MULTIPLY_H_
#define APPROXJAX_APPROX_MULTIPLY_H_

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define APPROXJAX_HD __host__ __device__ __forceinline__
#else
#define APPROXJAX_HD inline
#endif

namespace approxjax {

constexpr int kMaxMantissaBits = 12;

// The summation order of every GEMM output, on every backend: products in
// order of k, summed from -0.0 in blocks of kSumBlock consecutive k; the block
// sums are then added in order (the first one as it is). Up to kSumBlock
// products this is the plain k-ordered sum; beyond, the fixed blocks let
// kernels split a long contraction across threads without changing a bit (and
// tighten the error bound).
constexpr int64_t kSumBlock = 4096;
constexpr uint32_t kSignMask = 0x80000000u;
constexpr uint32_t kExpMask = 0x7f800000u;
constexpr uint32_t kFracMask = 0x007fffffu;
constexpr uint32_t kInfBits = 0x7f800000u;
constexpr uint32_t kNanBits = 0x7fc00000u;

APPROXJAX_HD uint32_t FloatBits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
#endif
}

APPROXJAX_HD float BitsFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
#endif
}

// Biased exponent field (0 for zero and subnormals, 255 for inf and NaN).
APPROXJAX_HD int BiasedExponent(uint32_t bits) {
  return static_cast<int>((bits & kExpMask) >> 23);
}

// The top `m` fraction bits: the table index of an operand.
APPROXJAX_HD uint32_t MantissaIndex(uint32_t bits, int m) {
  return (bits & kFracMask) >> (23 - m);
}

// A table entry, split as value = (1 + frac/2**23) * 2**(exp - 127) with exp
// allowed to drop below 1 so that subnormal entries are exact too.
struct LutEntry {
  int exp;        // biased exponent after normalisation; meaningless if zero
  uint32_t frac;  // 23 fraction bits after normalisation
  bool zero;
};

APPROXJAX_HD LutEntry SplitLutEntry(float v) {
  uint32_t bits = FloatBits(v) & ~kSignMask;
  LutEntry e{BiasedExponent(bits), bits & kFracMask, bits == 0};
  if (!e.zero && e.exp == 0) {  // subnormal entry: normalise.
    uint32_t frac = e.frac;
    int exp = 1;
    while ((frac & 0x00800000u) == 0) {
      frac <<= 1;
      --exp;
    }
    e.exp = exp;
    e.frac = frac & kFracMask;
  }
  return e;
}

// The simulated product of a and b under `lut` (row-major, 2**m x 2**m).
APPROXJAX_HD float ApproxMultiply(float a, float b, const float* lut, int m) {
  const uint32_t ab = FloatBits(a), bb = FloatBits(b);
  const uint32_t sign = (ab ^ bb) & kSignMask;
  const int ea = BiasedExponent(ab), eb = BiasedExponent(bb);
  const bool a_nan = ea == 255 && (ab & kFracMask) != 0;
  const bool b_nan = eb == 255 && (bb & kFracMask) != 0;
  if (a_nan || b_nan) return BitsFloat(kNanBits);
  const bool a_inf = ea == 255, b_inf = eb == 255;
  const bool a_zero = ea == 0, b_zero = eb == 0;  // zero or subnormal
  if (a_inf || b_inf) {
    if (a_zero || b_zero) return BitsFloat(kNanBits);
    return BitsFloat(sign | kInfBits);
  }
  if (a_zero || b_zero) return BitsFloat(sign);
  const uint32_t i = MantissaIndex(ab, m), j = MantissaIndex(bb, m);
  const LutEntry e = SplitLutEntry(lut[(i << m) | j]);
  if (e.zero) return BitsFloat(sign);
  const int exp = e.exp + (ea - 127) + (eb - 127);
  if (exp >= 255) return BitsFloat(sign | kInfBits);
  if (exp <= 0) return BitsFloat(sign);
  return BitsFloat(sign | (static_cast<uint32_t>(exp) << 23) | e.frac);
}

// Operands whose unbiased exponent lies in [-range, range] are "regular" for
// a table whose nonzero entries have unbiased exponents in [lo, hi]: every
// partial product the fast kernels form, lut * 2**eb and then * 2**ea (or
// lut * (2**ea * 2**eb)), is then an exact normal float32, so the fast kernels
// equal ApproxMultiply bit for bit. Zeros and subnormals are regular too (they
// scale by a signed zero); inf, NaN and out-of-range exponents are not and go
// through ApproxMultiply itself. Returns -1 where no normal operand is regular.
APPROXJAX_HD int RegularExponentRange(int lo, int hi) {
  // Need lo - 2r >= -126 and hi + 2r <= 127 (and the single scalings inside).
  int r1 = (126 + lo) / 2;
  int r2 = (127 - hi) / 2;
  int r = r1 < r2 ? r1 : r2;
  if (126 + lo < 0 || 127 - hi < 0) return -1;
  return r < 0 ? -1 : r;
}

}  // namespace approxjax

#endif  // APPROXJAX_APPROX_MULTIPLY_H_
