/* Mitchell's logarithmic multiplier (IRE Trans. Electronic Computers, 1962).
 * Same table as approxjax.multipliers.mitchell(m); FORCE_LOWEST_BIT and
 * TRUNCATE_RESULT select the options of the same names. */
#include "model_common.h"

#ifndef FORCE_LOWEST_BIT
#define FORCE_LOWEST_BIT 0
#endif
#ifndef TRUNCATE_RESULT
#define TRUNCATE_RESULT 0
#endif

float mitchell_mul(float a, float b) {
  float out;
  if (aj_special(a, b, &out)) return out;
  uint32_t i = aj_frac(a), j = aj_frac(b);
  if (FORCE_LOWEST_BIT && AJ_M > 0) {
    i |= 1u;
    j |= 1u;
  }
  const uint32_t s = i + j; /* log-domain sum of the fractions */
  double p = s < AJ_ONE ? 1.0 + (double)s / AJ_ONE : 2.0 * (double)s / AJ_ONE;
  if (TRUNCATE_RESULT) p = aj_truncate(p);
  return aj_finish(a, b, p);
}
