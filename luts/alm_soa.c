/* ALM-SOA: Mitchell's multiplier with a set-one adder (Liu et al., IEEE TCAS-I
 * 2018): the low ALM_SOA_W bits of the fraction sum are set to 1 without a
 * carry, the upper bits are added exactly. Same table as
 * approxjax.multipliers.alm_soa(m, w). */
#include "model_common.h"

#ifndef ALM_SOA_W
#define ALM_SOA_W 3
#endif

float alm_soa_mul(float a, float b) {
  float out;
  if (aj_special(a, b, &out)) return out;
  const uint32_t i = aj_frac(a), j = aj_frac(b);
  const uint32_t t = (((i >> ALM_SOA_W) + (j >> ALM_SOA_W)) << ALM_SOA_W) |
                     ((1u << ALM_SOA_W) - 1u);
  const double p = t < AJ_ONE ? 1.0 + (double)t / AJ_ONE : 2.0 * (double)t / AJ_ONE;
  return aj_finish(a, b, p);
}
