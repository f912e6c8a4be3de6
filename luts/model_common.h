/* Shared helpers of approxjax's C functional models (luts/*.c).
 *
 * A model is `float name(float a, float b)`: a whole floating-point multiplier
 * (sign, exponent, special values) whose significand product is approximate.
 * APPROXJAX_M (mantissa bits kept from each operand) is set by
 * approxjax.from_c; the models compute the significand product from the top
 * APPROXJAX_M fraction bits i and j of the operands in integer or exact
 * double arithmetic, as a hardware datapath of that width would. */
#ifndef APPROXJAX_MODEL_COMMON_H_
#define APPROXJAX_MODEL_COMMON_H_

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef APPROXJAX_M
#define APPROXJAX_M 7
#endif
#define AJ_M APPROXJAX_M
#define AJ_ONE (1u << AJ_M) /* 1.0 in fixed point with AJ_M fraction bits */

static inline uint32_t aj_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  return u;
}

/* Options shared by several models: set the lowest kept fraction bit of each
 * operand to 1, and truncate the product's significand to AJ_M bits. */
#ifndef FORCE_LOWEST_BIT
#define FORCE_LOWEST_BIT 0
#endif
#ifndef TRUNCATE_RESULT
#define TRUNCATE_RESULT 0
#endif

/* Top AJ_M fraction bits of x (the table index). */
static inline uint32_t aj_frac(float x) {
  return (aj_bits(x) & 0x7fffffu) >> (23 - AJ_M);
}

/* The operand fraction a model works on: aj_frac, with FORCE_LOWEST_BIT. */
static inline uint32_t aj_kept(float x) {
  return (FORCE_LOWEST_BIT && AJ_M > 0) ? (aj_frac(x) | 1u) : aj_frac(x);
}

static inline int aj_exp(float x) { return (int)((aj_bits(x) >> 23) & 0xffu); }

/* Special operands: NaN, inf, zero and subnormals. Returns 1 and the product
 * in *out when a or b is one of them. */
static inline int aj_special(float a, float b, float* out) {
  const int ea = aj_exp(a), eb = aj_exp(b);
  const int neg = (int)((aj_bits(a) ^ aj_bits(b)) >> 31);
  if (isnan(a) || isnan(b)) {
    *out = NAN;
    return 1;
  }
  if (ea == 255 || eb == 255) {
    *out = (ea == 0 || eb == 0) ? NAN : (neg ? -INFINITY : INFINITY);
    return 1;
  }
  if (ea == 0 || eb == 0) {
    *out = neg ? -0.0f : 0.0f;
    return 1;
  }
  return 0;
}

/* Truncates a significand product p in [1, 4) to AJ_M fraction bits. */
static inline double aj_truncate(double p) {
  const double scale = p >= 2.0 ? 2.0 : 1.0;
  return floor(p / scale * AJ_ONE) / AJ_ONE * scale;
}

/* Scales the significand product by both exponents, exactly; flushes results
 * below the smallest normal to zero and overflows to inf. */
static inline float aj_finish(float a, float b, double significand) {
  const int neg = (int)((aj_bits(a) ^ aj_bits(b)) >> 31);
  float r = ldexpf((float)significand, aj_exp(a) - 127 + aj_exp(b) - 127);
  if (fabsf(r) < FLT_MIN) r = 0.0f;
  return neg ? -r : r;
}

#endif /* APPROXJAX_MODEL_COMMON_H_ */
