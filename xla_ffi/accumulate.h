// Reduced and approximate accumulation, bit for bit (the C++ statement of
// approxjax/_src/arithmetic/arithmetic.py; reference.py states it in NumPy).
//
// A float format (FormatSpec) has `m` fraction bits, the smallest normal
// exponent `emin`, its largest finite value `max`, and rules for subnormals,
// overflow, NaN and infinity; every value is a float32. Rounding a real x to
// it (RoundToFormat): NaN stays NaN (or, in a format without NaN, becomes a
// zero of the opposite sign); x is rounded at the quantum 2**(max(e, emin) -
// m) of its binade e (nearest-even, toward zero, away from zero, or up with
// probability the discarded fraction: stochastic, from 32 random bits); a
// result above `max` overflows to inf, NaN or `max` (toward zero: to `max`);
// below the smallest normal it stays subnormal or flushes to a signed zero.
//
// An accumulator adds a product to the running sum and rounds the *exact*
// sum once (AddRounded: the sum in double, its error by TwoSum, rounded to
// odd so that the second rounding to the format is correct, as an adder of
// the format computes it). LOA and user adders replace the addition.
#ifndef APPROXJAX_ACCUMULATE_H_
#define APPROXJAX_ACCUMULATE_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "approx_multiply.h"

namespace approxjax {

enum RoundingMode : int64_t {
  kNearestEven = 0,
  kTowardZero = 1,
  kAwayFromZero = 2,
  kStochastic = 3,
};

struct FormatSpec {
  int m = 23;       // fraction bits
  int emin = -126;  // unbiased exponent of the smallest normal
  float max = 3.4028234663852886e38f;
  bool subnormals = true;
  int overflow = 0;  // 0 inf, 1 NaN, 2 saturate
  bool has_nan = true;
  bool has_inf = true;
  int rounding = kNearestEven;

  bool IsFloat32NearestEven() const {
    return m == 23 && emin == -126 && subnormals && overflow == 0 && has_inf &&
           rounding == kNearestEven;
  }
  bool IsBfloat16NearestEven() const {
    return m == 7 && emin == -126 && subnormals && overflow == 0 && has_inf &&
           rounding == kNearestEven && max == 3.3895313892515355e38f;
  }
};

// The arithmetic attribute of the GEMM targets (Arithmetic in Python);
// decoded as a dictionary attribute, members in this order.
struct ArithmeticSpec {
  bool enabled = false;        // anything but float32 nearest-even sums
  bool exact_product = false;  // IEEE float32 products, no table
  int64_t product_bits = 24;   // at most, of IEEE products (operand formats)
  // Every IEEE product is a multiple of 2**product_exponent (the operand
  // formats' least quanta multiplied).
  int64_t product_exponent = -298;
  // Every IEEE product is exact in float32 (at most 24 bits, a quantum of at
  // least 2**-149, below 2**127).
  bool products_exact = false;
  int64_t acc_m = 23, acc_emin = -126;
  float acc_max = 3.4028234663852886e38f;
  bool acc_subnormals = true;
  int64_t acc_overflow = 0, acc_nan = 0;
  bool acc_inf = true;
  int64_t acc_rounding = 0;
  bool product = false;
  int64_t prod_m = 23, prod_emin = -126;
  float prod_max = 3.4028234663852886e38f;
  bool prod_subnormals = true;
  int64_t prod_overflow = 0, prod_nan = 0;
  bool prod_inf = true;
  int64_t prod_rounding = 0;
  int64_t adder = 0;  // 0 exact, 1 LOA, 2 user
  int64_t loa_bits = 0;
  int64_t adder_address = 0;
};

using UserAdder = float (*)(float, float);

// What the kernels use: the formats, the adder and the stochastic seed.
struct Accumulator {
  bool enabled = false;
  bool exact_product = false;
  FormatSpec acc, prod;
  bool round_product = false;
  int adder = 0;
  int loa_bits = 0;
  UserAdder user = nullptr;
  uint64_t seed = 0;
  // The most significant bits of any product (24 where unknown).
  int product_bits = 24;
  // Every product is a multiple of 2**product_exponent (-298 where unknown).
  int product_exponent = -298;
  // Every product is exact in float32, so that a fused multiply-add of its
  // factors gives the same sum (IEEE products of narrow formats, or a
  // separable table's products that need no rounding).
  bool products_exact = false;
  // bfloat16 sums rounded by vcvtne2ps2bf16 (the plan's choice, which
  // keeps every sum normal or zero: Plan::bfloat16_pairs).
  bool bfloat16_pairs = false;

  // Whether the vectorised path applies (the rest is scalar).
  bool FastPath() const {
    return adder == 0 && acc.rounding != kStochastic && acc.m <= 21 &&
           (!round_product || prod.rounding != kStochastic);
  }
  // Whether the float32 sum, rounded to nearest, then rounded nearest-even
  // to the accumulator, is the exact sum rounded once: where the running
  // sum and the product both have p <= 11 significant bits, p the format's
  // precision (Figueroa 1995: double rounding is innocuous for addition
  // when the first precision, 24, is at least 2p + 1; also at the format's
  // subnormal quantum, as p + m < 24). So bfloat16, float16 and tf32 sums
  // of products of at most their precision need no rounding to odd.
  bool NearestSumsExact() const {
    return adder == 0 && !round_product && acc.rounding == kNearestEven &&
           acc.m <= 10 && product_bits <= acc.m + 1;
  }
  // bfloat16 nearest-even sums of float32 additions (the float32 sum
  // rounded to nearest or to odd, then to bfloat16) of table products, or of
  // IEEE products that are multiples of 2**-126 (so every sum is zero or
  // normal).
  bool Bfloat16Sums() const {
    return enabled && adder == 0 && !round_product && acc.IsBfloat16NearestEven() &&
           (!exact_product || product_exponent >= -126);
  }
  bool Stochastic() const {
    return acc.rounding == kStochastic ||
           (round_product && prod.rounding == kStochastic);
  }
};

inline FormatSpec MakeFormat(int64_t m, int64_t emin, float max, bool sub,
                             int64_t overflow, int64_t nan, bool inf,
                             int64_t rounding) {
  FormatSpec f;
  f.m = static_cast<int>(m);
  f.emin = static_cast<int>(emin);
  f.max = max;
  f.subnormals = sub;
  f.overflow = static_cast<int>(overflow);
  f.has_nan = nan != 2;
  f.has_inf = inf;
  f.rounding = static_cast<int>(rounding);
  return f;
}

inline Accumulator MakeAccumulator(const ArithmeticSpec& s, uint64_t seed) {
  Accumulator a;
  a.enabled = s.enabled;
  a.exact_product = s.exact_product;
  a.acc = MakeFormat(s.acc_m, s.acc_emin, s.acc_max, s.acc_subnormals,
                     s.acc_overflow, s.acc_nan, s.acc_inf, s.acc_rounding);
  a.prod = MakeFormat(s.prod_m, s.prod_emin, s.prod_max, s.prod_subnormals,
                      s.prod_overflow, s.prod_nan, s.prod_inf, s.prod_rounding);
  a.round_product = s.product;
  a.product_bits = static_cast<int>(s.product_bits);
  a.product_exponent = static_cast<int>(s.product_exponent);
  a.products_exact = s.products_exact;
  a.adder = static_cast<int>(s.adder);
  a.loa_bits = static_cast<int>(s.loa_bits);
  a.user = reinterpret_cast<UserAdder>(static_cast<uintptr_t>(s.adder_address));
  a.seed = seed;
  return a;
}

// 32 random bits for one addition: a hash of the seed and the output's
// global position (batch g, row i, column n) and the addition's k. The same
// bits for any tiling, thread count or instruction set.
APPROXJAX_HD uint32_t RandomBits(uint64_t seed, int64_t g, int64_t i, int64_t n,
                                 int64_t k) {
  uint64_t z = seed ^ (uint64_t(g) * 0x9e3779b97f4a7c15ull);
  z ^= uint64_t(i) * 0xbf58476d1ce4e5b9ull + (z << 6) + (z >> 2);
  z ^= uint64_t(n) * 0x94d049bb133111ebull + (z << 6) + (z >> 2);
  z ^= uint64_t(k) * 0x2545f4914f6cdd1dull + (z << 6) + (z >> 2);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<uint32_t>(z >> 32);
}

// 2**q as a double (|q| < 1000).
inline double Pow2(int q) {
  const uint64_t bits = static_cast<uint64_t>(q + 1023) << 52;
  double out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// x (exact in double) rounded to the format; returns the float32 value.
inline float RoundToFormat(double x, const FormatSpec& f, uint32_t rnd) {
  if (std::isnan(x)) {
    if (f.has_nan) return BitsFloat(kNanBits);
    return std::signbit(x) ? 0.0f : -0.0f;  // as ml_dtypes converts NaN
  }
  const bool neg = std::signbit(x);
  const double a = std::fabs(x);
  const float maxf = f.max;
  const auto overflowed = [&]() -> float {
    if (f.rounding == kTowardZero || f.overflow == 2) return neg ? -maxf : maxf;
    if (f.overflow == 1) return BitsFloat(kNanBits);
    return neg ? -INFINITY : INFINITY;
  };
  if (std::isinf(a)) {
    if (f.has_inf) return neg ? -INFINITY : INFINITY;
    if (f.overflow == 1) return BitsFloat(kNanBits);
    return neg ? -maxf : maxf;
  }
  if (a == 0) return neg ? -0.0f : 0.0f;
  // a = sig * 2**(e - 52) with sig's leading bit at 52 (a double made from
  // float32 sums is never subnormal); rounded at the quantum 2**q, by
  // integer shifts of the significand: whole and the discarded bits rem.
  uint64_t bits;
  std::memcpy(&bits, &a, sizeof(bits));
  const int e = static_cast<int>(bits >> 52) - 1023;
  const uint64_t sig = (bits & ((uint64_t{1} << 52) - 1)) | (uint64_t{1} << 52);
  const int q = (e > f.emin ? e : f.emin) - f.m;
  const int sh = 52 - e + q;  // >= 52 - m > 0
  double whole;
  bool up = false;
  if (sh < 63) {
    const uint64_t w = sig >> sh, rem = sig & ((uint64_t{1} << sh) - 1);
    const uint64_t half = uint64_t{1} << (sh - 1);
    switch (f.rounding) {
      case kTowardZero:
        break;
      case kAwayFromZero:
        up = rem != 0;
        break;
      case kStochastic:  // rnd / 2**32 < rem / 2**sh, exactly
        up = sh >= 32 ? (uint64_t{rnd} << (sh - 32)) < rem
                      : uint64_t{rnd} < (rem << (32 - sh));
        break;
      default:
        up = rem > half || (rem == half && (w & 1) != 0);
    }
    whole = static_cast<double>(w);
  } else {  // far below the quantum (a tiny sum in a wide-range format)
    whole = 0.0;
    const double frac = std::ldexp(a, -q);  // exact, < 2**-10
    switch (f.rounding) {
      case kAwayFromZero:
        up = true;
        break;
      case kStochastic:
        up = double(rnd) < frac * 4294967296.0;
        break;
      default:
        break;
    }
  }
  whole += up ? 1.0 : 0.0;
  double r = whole * Pow2(q);  // exact
  if (!f.subnormals && r < std::ldexp(1.0, f.emin)) r = 0.0;
  if (r > double(maxf)) return overflowed();
  const float out = static_cast<float>(r);  // exact
  return neg ? -out : out;
}

// The exact sum of two floats rounded to odd at double precision: a double
// whose rounding to any format of at most 51 significand bits is the
// correct rounding of the exact sum (Boldo and Melquiond, 2008).
inline double SumToOdd(float x, float y) {
  const double a = x, b = y;
  double s = a + b;
  if (!std::isfinite(s)) return s;
  const double bb = s - a;
  const double err = (a - (s - bb)) + (b - bb);
  if (err == 0) return s;
  uint64_t bits;
  std::memcpy(&bits, &s, sizeof(bits));
  if ((bits & 1) == 0) {  // even: step to the odd neighbour on x's side
    bits += ((err > 0) == (s > 0)) ? 1 : -1;
    std::memcpy(&s, &bits, sizeof(bits));
  }
  return s;
}

// The lower-part OR adder (LOA), in the accumulator's format (see LOA in
// arithmetic.py): significands aligned to the larger exponent at m fraction
// bits (lower bits dropped), the `bits` low bits ORed when the signs agree.
inline double LoaSum(float x, float y, const FormatSpec& f, int bits) {
  if (!std::isfinite(x) || !std::isfinite(y)) return double(x) + double(y);
  if (x == 0) return y == 0 ? double(x) + double(y) : double(y);
  if (y == 0) return x;
  // |v| = S * 2**p (S the 24-bit significand, subnormals unnormalised).
  const auto split = [](float v, uint64_t* S, int* p, int* top) {
    const uint32_t b = FloatBits(v);
    const int E = static_cast<int>((b >> 23) & 0xff);
    *S = (b & 0x7fffffu) | (E ? 0x800000u : 0u);
    *p = (E ? E : 1) - 150;
    *top = *p + 63 - __builtin_clzll(*S);  // floor(log2 |v|)
  };
  uint64_t Sx, Sy;
  int px, py, tx, ty;
  split(x, &Sx, &px, &tx);
  split(y, &Sy, &py, &ty);
  int e = tx > ty ? tx : ty;
  if (e < f.emin) e = f.emin;
  const int q = e - f.m;  // the larger operand's quantum (>= px, py)
  const auto aligned = [q](uint64_t S, int p) -> int64_t {
    const int shift = q - p;
    return shift >= 64 ? 0 : static_cast<int64_t>(S >> shift);
  };
  const int64_t ax = aligned(Sx, px), ay = aligned(Sy, py);
  const bool sx = std::signbit(x), sy = std::signbit(y);
  int64_t mag;
  bool neg;
  if (sx == sy) {
    const int64_t low = (int64_t{1} << bits) - 1;
    mag = (((ax >> bits) + (ay >> bits)) << bits) | ((ax | ay) & low);
    neg = sx;
  } else {
    mag = ax >= ay ? ax - ay : ay - ax;
    neg = ax >= ay ? sx : sy;
    if (mag == 0) neg = false;
  }
  const double r = double(mag) * Pow2(q);  // exact
  return neg ? -r : r;
}

// The product p (a float32 value) rounded to the product format, if any.
inline float RoundProduct(float p, const Accumulator& acc, uint32_t rnd) {
  return acc.round_product ? RoundToFormat(p, acc.prod, rnd) : p;
}

// One addition of the running sum: acc + p under the accumulator.
inline float AddRounded(float sum, float p, const Accumulator& acc,
                        uint32_t rnd) {
  switch (acc.adder) {
    case 1:
      return RoundToFormat(LoaSum(sum, p, acc.acc, acc.loa_bits), acc.acc, rnd);
    case 2:
      return acc.user(sum, p);
    default:
      if (acc.acc.IsFloat32NearestEven()) return sum + p;
      return RoundToFormat(SumToOdd(sum, p), acc.acc, rnd);
  }
}

}  // namespace approxjax

#endif  // APPROXJAX_ACCUMULATE_H_
