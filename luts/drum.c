/* DRUM, a dynamic-range unbiased multiplier (Hashemi, Bahar, Reda, ICCAD 2015),
 * on significands: keep DRUM_K significand bits (the leading one and
 * DRUM_K - 1 fraction bits), force the lowest kept bit to 1 when bits were
 * dropped, multiply exactly. Same table as approxjax.multipliers.drum(m, k). */
#include "model_common.h"

#ifndef DRUM_K
#define DRUM_K 4
#endif

static inline uint32_t drum_operand(uint32_t f) {
  const int drop = AJ_M - (DRUM_K - 1);
  if (drop <= 0) return f;
  return ((f >> drop) << drop) | (1u << drop);
}

float drum_mul(float a, float b) {
  float out;
  if (aj_special(a, b, &out)) return out;
  const double x = 1.0 + (double)drum_operand(aj_frac(a)) / AJ_ONE;
  const double y = 1.0 + (double)drum_operand(aj_frac(b)) / AJ_ONE;
  return aj_finish(a, b, x * y);
}
