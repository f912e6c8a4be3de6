/* Shared helpers of approxjax's integer C models (luts/int_*.c).
 *
 * A model is `int64_t name(int64_t a, int64_t b)` on operand values (two's
 * complement codes already converted to their values by the caller, as
 * approxjax.from_c(..., bits=, signed=) does). Each design is an unsigned
 * core on the magnitudes, with the product's sign applied after
 * (sign-magnitude), as in approxjax's integer catalog. Operand widths are
 * the macros INT_BITS_A and INT_BITS_B (default 8). */
#ifndef APPROXJAX_INT_COMMON_H_
#define APPROXJAX_INT_COMMON_H_

#include <stdint.h>

#ifndef INT_BITS_A
#define INT_BITS_A 8
#endif
#ifndef INT_BITS_B
#define INT_BITS_B INT_BITS_A
#endif

static inline uint64_t aj_mag(int64_t x) { return (uint64_t)(x < 0 ? -x : x); }

static inline int64_t aj_signed(int64_t a, int64_t b, uint64_t magnitude) {
  return ((a < 0) != (b < 0)) ? -(int64_t)magnitude : (int64_t)magnitude;
}

/* Position of the leading one of x (0 for x <= 1). */
static inline int aj_leading_one(uint64_t x) {
  int t = 0;
  while (x > 1) {
    x >>= 1;
    ++t;
  }
  return t;
}

#endif /* APPROXJAX_INT_COMMON_H_ */
