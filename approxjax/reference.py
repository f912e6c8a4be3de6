"""The simulated multiply in pure JAX: the definition, and the test oracle.

See :mod:`approxjax._src.arithmetic.reference` for the complete rule.
"""

from approxjax._src.arithmetic.reference import (
    SUM_BLOCK,
    UNIT_ROUNDOFF,
    accumulation_bound,
    canonical,
    dot_general,
    dot_general_bound,
    integer_dot_general,
    integer_multiply,
    mantissa_index,
    multiply,
    native_bound,
    products,
    sequential_dot_general,
)

__all__ = [
    "SUM_BLOCK",
    "UNIT_ROUNDOFF",
    "accumulation_bound",
    "canonical",
    "dot_general",
    "dot_general_bound",
    "integer_dot_general",
    "integer_multiply",
    "mantissa_index",
    "multiply",
    "native_bound",
    "products",
    "sequential_dot_general",
]
