/* The broken-array multiplier (Mahdiani, Ahmadi, Fakhraie, Lucas, IEEE
 * TCAS-I 2010): partial-product bits a_i b_j are generated only for rows
 * j >= BAM_HBL and columns i + j >= BAM_VBL, and summed exactly. With
 * BAM_HBL = 0 it is the truncated multiplier of k = BAM_VBL columns. Same
 * tables as approxjax.integer.broken_array(bits, hbl, vbl, signed) and
 * truncated(bits, k, signed). */
#include "int_common.h"

#ifndef BAM_HBL
#define BAM_HBL 0
#endif
#ifndef BAM_VBL
#define BAM_VBL 4
#endif

int64_t array_imul(int64_t a, int64_t b) {
  const uint64_t x = aj_mag(a), y = aj_mag(b);
  uint64_t sum = 0;
  for (int j = BAM_HBL; j < INT_BITS_B; ++j) {
    if (!((y >> j) & 1)) continue;
    for (int i = 0; i < INT_BITS_A; ++i) {
      if (i + j >= BAM_VBL && ((x >> i) & 1)) sum += (uint64_t)1 << (i + j);
    }
  }
  return aj_signed(a, b, sum);
}
