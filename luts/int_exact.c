/* The exact integer multiplier: approxjax.integer.exact(bits, signed). */
#include "int_common.h"

int64_t exact_imul(int64_t a, int64_t b) { return a * b; }
