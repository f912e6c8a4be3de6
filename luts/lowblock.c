/* A regular-error design (Yu et al., IEEE TVLSI 2024; broken-array cells,
 * Mahdiani et al., TCAS-I 2010): the exact product of the significands
 * without the partial products of the LOWBLOCK_K low fraction bits of both
 * operands, (1 + x)(1 + y) - xl * yl. Same table as approxjax.lowblock(m, k). */
#include "model_common.h"

#ifndef LOWBLOCK_K
#define LOWBLOCK_K 2
#endif

float lowblock_mul(float a, float b) {
  float out;
  if (aj_special(a, b, &out)) return out;
  const uint32_t fa = aj_frac(a), fb = aj_frac(b);
  const uint32_t low = (1u << LOWBLOCK_K) - 1u;
  const double x = 1.0 + (double)fa / AJ_ONE;
  const double y = 1.0 + (double)fb / AJ_ONE;
  const double lows = (double)(fa & low) / AJ_ONE * ((double)(fb & low) / AJ_ONE);
  return aj_finish(a, b, x * y - lows);
}
