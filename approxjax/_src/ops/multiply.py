"""Approximate elementwise ``multiply`` (broadcasting), the same model as dot_general."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from approxjax._src.arithmetic import formats
from approxjax._src.arithmetic.arithmetic import Arithmetic, GemmSpec, convert_operands
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.kernels import ffi
from approxjax._src.ops.checks import check_multiplier, check_operand
from approxjax._src.ops.gemm import split, zero_cotangents


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _approx_multiply(spec, a, b, leaves):
    return _products(spec, a, b, leaves)


def _products(spec: GemmSpec, a, b, leaves):
    """Elementwise products under an arithmetic: operands converted, the
    table's (or IEEE) products, rounded to the product format if any."""
    lut, facts, key, _ = leaves
    a, b, _ = convert_operands(a, b, spec, key)
    p = a * b if lut is None else ffi.multiply(a, b, lut, facts)
    if spec.product is not None:
        pkey = None if key is None else jax.random.fold_in(_key(key), 7)
        p = formats.convert(p, spec.product, spec.product_rounding, pkey)
    return p


def _key(key):
    if jnp.issubdtype(jax.typeof(key).dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def _approx_multiply_fwd(spec, a, b, leaves):
    return _products(spec, a, b, leaves), (a, b, leaves)


def _approx_multiply_bwd(spec, residuals, g):
    a, b, leaves = residuals
    return (
        _products(spec, g, b, leaves),
        _products(spec, a, g, leaves),
        zero_cotangents((leaves,))[0],
    )


_approx_multiply.defvjp(_approx_multiply_fwd, _approx_multiply_bwd)


def multiply(a: jax.Array, b: jax.Array, multiplier: Multiplier | Arithmetic | None) -> jax.Array:
    """Elementwise simulated product ``a * b`` (broadcasting), same model as dot_general.

    With an :class:`~approxjax.Arithmetic`, the operands are converted to its
    formats and the product rounded to its product format (no sums here:
    accumulator and adder do not apply). Its gradients are simulated
    products too: ``da = g * b`` and ``db = a * g`` under the same
    arithmetic. ``multiplier=None`` multiplies exactly.
    """
    a = check_operand("a", a)
    b = check_operand("b", b)
    check_multiplier("multiplier", multiplier, allow_forward=False)
    out_dtype = jnp.result_type(a.dtype, b.dtype)
    if multiplier is None:
        return a * b
    spec, leaves = split(multiplier)
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    fa = jnp.broadcast_to(a.astype(jnp.float32), shape).reshape(-1)
    fb = jnp.broadcast_to(b.astype(jnp.float32), shape).reshape(-1)
    fa, fb = ffi.same_varying_axes(fa, fb)
    return _approx_multiply(spec, fa, fb, leaves).reshape(shape).astype(out_dtype)
