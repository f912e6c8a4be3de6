/* DRUM (Hashemi, Bahar, Reda, ICCAD 2015) on integers: each magnitude keeps
 * DRUM_K bits from its leading one, the lowest kept bit set to 1 when bits
 * were dropped, then an exact product. Same table as
 * approxjax.integer.drum(bits, k, signed). */
#include "int_common.h"

#ifndef DRUM_K
#define DRUM_K 4
#endif

static uint64_t drum_reduce(uint64_t x) {
  const int drop = aj_leading_one(x) - (DRUM_K - 1);
  if (drop <= 0) return x;
  return ((x >> drop) << drop) | ((uint64_t)1 << drop);
}

int64_t drum_imul(int64_t a, int64_t b) {
  return aj_signed(a, b, drum_reduce(aj_mag(a)) * drum_reduce(aj_mag(b)));
}
