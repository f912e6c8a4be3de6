"""Approximate elementwise ``multiply`` (broadcasting), the same model as dot_general."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.kernels import ffi
from approxjax._src.ops.checks import check_multiplier, check_operand


@jax.custom_vjp
def _approx_multiply(a, b, table):
    return ffi.multiply(a, b, *table)


def _approx_multiply_fwd(a, b, table):
    return ffi.multiply(a, b, *table), (a, b, table)


def _approx_multiply_bwd(residuals, g):
    a, b, table = residuals
    return (
        ffi.multiply(g, b, *table),
        ffi.multiply(a, g, *table),
        (jnp.zeros_like(table[0]), None),
    )


_approx_multiply.defvjp(_approx_multiply_fwd, _approx_multiply_bwd)


def multiply(a: jax.Array, b: jax.Array, multiplier: Multiplier | None) -> jax.Array:
    """Elementwise simulated product ``a * b`` (broadcasting), same model as dot_general.

    Its gradients are simulated products too: ``da = g * b`` and ``db = a * g``
    under the same multiplier. ``multiplier=None`` multiplies exactly.
    """
    a = check_operand("a", a)
    b = check_operand("b", b)
    check_multiplier("multiplier", multiplier, allow_forward=False)
    out_dtype = jnp.result_type(a.dtype, b.dtype)
    if multiplier is None:
        return a * b
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    fa = jnp.broadcast_to(a.astype(jnp.float32), shape).reshape(-1)
    fb = jnp.broadcast_to(b.astype(jnp.float32), shape).reshape(-1)
    fa, fb = ffi.same_varying_axes(fa, fb)
    table = (multiplier.lut, multiplier.facts)
    return _approx_multiply(fa, fb, table).reshape(shape).astype(out_dtype)
