"""Integer multipliers: the built-in catalog and the type.

Each design takes ``bits`` (an int, or a pair for unequal operand widths, 2
to 12 bits for a table) and ``signed``; see
:mod:`approxjax._src.arithmetic.integer_catalog` for the papers and
:mod:`approxjax._src.arithmetic.integer` for the table's layout. C models of
your own come in through :func:`approxjax.from_c` with ``bits=``.

Example::

  >>> import approxjax as ax
  >>> mult = ax.integer.mitchell(8, signed=True)
  >>> int(ax.reference.integer_multiply(100, -3, mult))
  -272
"""

from approxjax._src.arithmetic.integer import (
    IntegerMultiplier,
    code_range,
    operand_values,
)
from approxjax._src.arithmetic.integer import stack_integer as stack
from approxjax._src.arithmetic.integer_catalog import (
    CATALOG,
    broken_array,
    drum,
    exact,
    get,
    kulkarni,
    mitchell,
    truncated,
)

__all__ = [
    "CATALOG",
    "IntegerMultiplier",
    "broken_array",
    "code_range",
    "drum",
    "exact",
    "get",
    "kulkarni",
    "mitchell",
    "operand_values",
    "stack",
    "truncated",
]
