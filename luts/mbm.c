/* The minimally biased multiplier (Saadat, Bokhari, Parameswaran, IEEE TCAD
 * 2018): Mitchell plus the correction c = 2^-4 + 2^-6. Without a carry out of
 * the fraction sum s the product is 1 + s + c (which may carry into the next
 * binade, as ApproxTrain's published MBM tables have it); with a carry the
 * term is halved, 2 (s + c/2), and left out where that would reach 4. Same
 * table as approxjax.mbm(m); FORCE_LOWEST_BIT and TRUNCATE_RESULT select the
 * options of the same names (ApproxTrain's MBM tables set both). */
#include "model_common.h"

float mbm_mul(float a, float b) {
  float out;
  if (aj_special(a, b, &out)) return out;
  const uint32_t i = aj_kept(a), j = aj_kept(b);
  const double c = 0.0625 + 0.015625;
  const double s = (double)(i + j) / AJ_ONE;
  double p;
  if (s < 1.0) {
    p = 1.0 + s + c;
  } else {
    const double f = s - 1.0 + c / 2.0;
    p = 2.0 * (1.0 + (f < 1.0 ? f : s - 1.0));
  }
  if (TRUNCATE_RESULT) p = aj_truncate(p);
  return aj_finish(a, b, p);
}
