/* Exact multiplication of significands truncated to APPROXJAX_M bits.
 * Same table as approxjax.multipliers.truncated(m); define
 * TRUNCATE_RESULT=1 for truncated(m, truncate_result=True). */
#include "model_common.h"

float truncated_mul(float a, float b) {
  float out;
  if (aj_special(a, b, &out)) return out;
  const double x = 1.0 + (double)aj_frac(a) / AJ_ONE;
  const double y = 1.0 + (double)aj_frac(b) / AJ_ONE;
  double p = x * y;
  if (TRUNCATE_RESULT) p = aj_truncate(p);
  return aj_finish(a, b, p);
}
