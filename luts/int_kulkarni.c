/* The underdesigned multiplier of Kulkarni, Gupta and Ercegovac (VLSI
 * Design 2011): 2x2-bit blocks with 3 * 3 = 7, composed by exact addition.
 * Same table as approxjax.integer.kulkarni(bits, signed). */
#include "int_common.h"

int64_t kulkarni_imul(int64_t a, int64_t b) {
  const uint64_t x = aj_mag(a), y = aj_mag(b);
  uint64_t sum = 0;
  for (int i = 0; i < (INT_BITS_A + 1) / 2; ++i) {
    const uint64_t da = (x >> (2 * i)) & 3;
    for (int j = 0; j < (INT_BITS_B + 1) / 2; ++j) {
      const uint64_t db = (y >> (2 * j)) & 3;
      sum += (da == 3 && db == 3 ? 7 : da * db) << (2 * (i + j));
    }
  }
  return aj_signed(a, b, sum);
}
