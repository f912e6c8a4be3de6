"""The simulated multiply in pure JAX: the definition, and the test oracle.

For float32 operands ``a`` and ``b`` (bfloat16 and float16 are first converted
to float32, which is exact) and a table ``lut`` with ``m`` mantissa bits:

1. NaN in either operand gives NaN.
2. inf times a zero or subnormal gives NaN; inf times anything else gives inf
   with sign ``sign(a) xor sign(b)``.
3. A zero or subnormal operand gives a zero with sign ``sign(a) xor sign(b)``
   (subnormal operands are flushed, as in most narrow hardware datapaths).
4. Otherwise write ``a = (-1)**sa * 1.fa * 2**ea`` and likewise ``b``; let ``i``
   and ``j`` be the top ``m`` bits of ``fa`` and ``fb`` (truncation). The
   product is ``(-1)**(sa xor sb) * lut[i, j] * 2**(ea + eb)``, scaled exactly:
   a magnitude of ``2**128`` or more gives inf, one below ``2**-126`` (the
   smallest normal float32) gives a signed zero, and a zero entry gives a
   signed zero.

A GEMM sums its products in float32. The kernels add them in order of ``k``
starting from ``-0.0`` (so a single product keeps its sign of zero); this
module sums them with XLA's reduction, whose order is unspecified. Both sums
are of the same exact products, so they differ by at most
:func:`accumulation_bound`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The kernels sum products in blocks of this many k before adding the block
# sums in order (kSumBlock in xla_ffi/approx_multiply.h).
SUM_BLOCK = 4096

_SIGN = np.uint32(0x80000000)
_FRAC = np.uint32(0x007FFFFF)
_INF = np.uint32(0x7F800000)
_NAN = np.uint32(0x7FC00000)
UNIT_ROUNDOFF = 2.0**-24  # float32


def _bits(x: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)


def _float(bits: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(bits.astype(jnp.uint32), jnp.float32)


def mantissa_index(x: jax.Array, m: int) -> jax.Array:
    """The table index of each operand: its top ``m`` fraction bits (int32)."""
    return ((_bits(x) & _FRAC) >> (23 - m)).astype(jnp.int32)


def multiply(a: jax.Array, b: jax.Array, lut: jax.Array) -> jax.Array:
    """Elementwise simulated products of ``a`` and ``b`` (broadcast) under ``lut``.

    Args:
      a, b: float32, bfloat16 or float16 arrays (broadcastable).
      lut: float32 table of shape ``(2**m, 2**m)``.

    Returns:
      float32 products, bit for bit the model above.
    """
    lut = jnp.asarray(lut, jnp.float32)
    side = lut.shape[-1]
    m = side.bit_length() - 1
    ab, bb = jnp.broadcast_arrays(_bits(jnp.asarray(a)), _bits(jnp.asarray(b)))
    sign = (ab ^ bb) & _SIGN
    ea = ((ab >> 23) & np.uint32(0xFF)).astype(jnp.int32)
    eb = ((bb >> 23) & np.uint32(0xFF)).astype(jnp.int32)
    i = ((ab & _FRAC) >> (23 - m)).astype(jnp.int32)
    j = ((bb & _FRAC) >> (23 - m)).astype(jnp.int32)
    entry = _bits(lut[i, j]) & ~_SIGN
    el = ((entry >> 23) & np.uint32(0xFF)).astype(jnp.int32)
    fl = entry & _FRAC
    # A subnormal entry: normalise so that value = 1.fl * 2**(el - 127) exactly.
    sub = (el == 0) & (fl != 0)
    shift = lax.clz(fl).astype(jnp.int32) - 8
    fl = jnp.where(sub, (fl << jnp.maximum(shift, 0).astype(jnp.uint32)) & _FRAC, fl)
    el = jnp.where(sub, 1 - shift, el)
    exp = el + ea + eb - 254
    scaled = sign | (jnp.clip(exp, 0, 254).astype(jnp.uint32) << 23) | fl
    out = jnp.where((entry == 0) | (exp <= 0), sign, jnp.where(exp >= 255, sign | _INF, scaled))
    a_nan = (ea == 255) & ((ab & _FRAC) != 0)
    b_nan = (eb == 255) & ((bb & _FRAC) != 0)
    a_inf, b_inf = (ea == 255) & ~a_nan, (eb == 255) & ~b_nan
    a_zero, b_zero = ea == 0, eb == 0
    out = jnp.where(a_zero | b_zero, sign, out)
    out = jnp.where(a_inf | b_inf, jnp.where(a_zero | b_zero, _NAN, sign | _INF), out)
    out = jnp.where(a_nan | b_nan, _NAN, out)
    return _float(out)


def canonical(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers
) -> tuple[jax.Array, jax.Array, tuple[int, ...]]:
    """lhs -> (G, M, K), rhs -> (G, K, N) and the output shape of lax.dot_general."""
    (lc, rc), (lb, rb) = dimension_numbers
    lc, rc, lb, rb = map(tuple, (lc, rc, lb, rb))
    lf = tuple(d for d in range(lhs.ndim) if d not in lc and d not in lb)
    rf = tuple(d for d in range(rhs.ndim) if d not in rc and d not in rb)
    batch = tuple(lhs.shape[d] for d in lb)
    lfree = tuple(lhs.shape[d] for d in lf)
    rfree = tuple(rhs.shape[d] for d in rf)
    k = int(np.prod([lhs.shape[d] for d in lc], dtype=np.int64))
    g = int(np.prod(batch, dtype=np.int64))
    a = jnp.transpose(lhs, lb + lf + lc).reshape(g, int(np.prod(lfree, dtype=np.int64)), k)
    b = jnp.transpose(rhs, rb + rc + rf).reshape(g, k, int(np.prod(rfree, dtype=np.int64)))
    return a, b, batch + lfree + rfree


def products(lhs: jax.Array, rhs: jax.Array, dimension_numbers, lut: jax.Array) -> jax.Array:
    """All simulated products of a dot_general, shape ``(G, M, N, K)``."""
    a, b, _ = canonical(lhs, rhs, dimension_numbers)
    return multiply(a[:, :, None, :], jnp.swapaxes(b, 1, 2)[:, None, :, :], lut)


def dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers,
    lut: jax.Array,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.dot_general`` with every product simulated (the reference model).

    Memory is ``O(G * M * N * K)``: this is an oracle for tests, not a kernel.
    """
    out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
    _, _, shape = canonical(lhs, rhs, dimension_numbers)
    p = products(lhs, rhs, dimension_numbers, lut)
    if p.shape[-1] == 0:
        total = jnp.zeros(p.shape[:-1], jnp.float32)
    else:
        total = lax.reduce(p, np.float32(-0.0), lax.add, (3,))
    return total.reshape(shape).astype(out_dtype)


def accumulation_bound(abs_products_sum: np.ndarray | jax.Array, k: int) -> np.ndarray:
    """Largest difference between two float32 sums of the same ``k`` exact terms.

    Each recursive or pairwise float32 sum of ``k`` terms is within
    ``gamma(k - 1) * sum |p|`` of the exact sum, ``gamma(n) = n u / (1 - n u)``,
    ``u = 2**-24``; two such sums are within twice that of each other.
    """
    n = max(int(k) - 1, 0)
    gamma = n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)
    return 2 * gamma * np.asarray(abs_products_sum, dtype=np.float64)


def dot_general_bound(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers, lut: jax.Array
) -> np.ndarray:
    """:func:`accumulation_bound` for each output of a dot_general, in its layout."""
    _, _, shape = canonical(lhs, rhs, dimension_numbers)
    p = np.asarray(products(lhs, rhs, dimension_numbers, lut), dtype=np.float64)
    return accumulation_bound(np.abs(p).sum(-1), p.shape[-1]).reshape(shape)


def sequential_dot_general(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers: Sequence, lut: jax.Array
) -> np.ndarray:
    """The kernels' exact summation order, in NumPy: products in order of k,
    summed from -0.0 in blocks of ``SUM_BLOCK`` consecutive k, then the block
    sums added in order (``xla_ffi/approx_multiply.h``, ``kSumBlock``).

    Slow; for bit-exact checks of small GEMMs.
    """
    _, _, shape = canonical(lhs, rhs, dimension_numbers)
    p = np.asarray(products(lhs, rhs, dimension_numbers, lut), dtype=np.float32)
    if p.shape[-1] == 0:
        return np.zeros(p.shape[:-1], np.float32).reshape(shape)
    total = None
    with np.errstate(invalid="ignore", over="ignore"):
        for k0 in range(0, p.shape[-1], SUM_BLOCK):
            acc = np.full(p.shape[:-1], -0.0, np.float32)
            for k in range(k0, min(k0 + SUM_BLOCK, p.shape[-1])):
                acc = acc + p[..., k]
            total = acc if total is None else total + acc
    return total.reshape(shape)
