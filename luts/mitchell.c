/* Mitchell's logarithmic multiplier (IRE Trans. Electronic Computers, 1962).
 * Same table as approxjax.multipliers.mitchell(m); FORCE_LOWEST_BIT and
 * TRUNCATE_RESULT select the options of the same names. */
#include "model_common.h"

float mitchell_mul(float a, float b) {
  float out;
  if (aj_special(a, b, &out)) return out;
  const uint32_t i = aj_kept(a), j = aj_kept(b);
  const uint32_t s = i + j; /* log-domain sum of the fractions */
  double p = s < AJ_ONE ? 1.0 + (double)s / AJ_ONE : 2.0 * (double)s / AJ_ONE;
  if (TRUNCATE_RESULT) p = aj_truncate(p);
  return aj_finish(a, b, p);
}
