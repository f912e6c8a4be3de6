/* Mitchell's logarithmic multiplier (IRE Trans. Electronic Computers, 1962)
 * on integers: a = 2^ta + ra, b = 2^tb + rb; with f = ra 2^tb + rb 2^ta the
 * product is 2^(ta+tb) + f when f < 2^(ta+tb), else 2 f. Same table as
 * approxjax.integer.mitchell(bits, signed). */
#include "int_common.h"

int64_t mitchell_imul(int64_t a, int64_t b) {
  const uint64_t x = aj_mag(a), y = aj_mag(b);
  if (x == 0 || y == 0) return 0;
  const int ta = aj_leading_one(x), tb = aj_leading_one(y);
  const uint64_t f = ((x - ((uint64_t)1 << ta)) << tb) + ((y - ((uint64_t)1 << tb)) << ta);
  const uint64_t base = (uint64_t)1 << (ta + tb);
  return aj_signed(a, b, f < base ? base + f : 2 * f);
}
