"""Number formats (public): operand, product and accumulator formats of an
:class:`approxjax.Arithmetic`, and :func:`convert` to round float32 arrays to
them.

Presets: ``float32``, ``tf32``, ``bfloat16``, ``float16``, ``e4m3`` (OCP FP8
E4M3, no infinity, one NaN), ``e5m2`` (OCP FP8 E5M2), ``e2m3`` and ``e3m2``
(OCP MX FP6), ``e2m1`` (OCP MX FP4), with aliases (``bf16``, ``fp16``,
``fp8_e4m3``, ...); ``"eXmY"`` names an IEEE-style custom format and
:class:`Format` builds any other. See
:mod:`approxjax._src.arithmetic.formats` for the rules of rounding, NaN,
infinity, overflow and subnormals.

Example::

  >>> import jax.numpy as jnp
  >>> from approxjax import formats
  >>> formats.convert(jnp.float32(1.0625), "e4m3").item()
  1.0
"""

from approxjax._src.arithmetic.formats import (
    ROUNDINGS,
    Format,
    convert,
    get,
    is_representable,
    presets,
)

__all__ = ["ROUNDINGS", "Format", "convert", "get", "is_representable", "presets"]
