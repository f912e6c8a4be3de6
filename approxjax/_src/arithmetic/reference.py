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

from approxjax._src.arithmetic.lowrank import float32_error

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


def integer_multiply(a: jax.Array, b: jax.Array, multiplier) -> jax.Array:
    """Products of integer operand codes under an integer multiplier:
    ``table[a mod 2**bits_a, b mod 2**bits_b]`` (bit patterns index the
    table), int32, broadcast like ``a * b``. Codes are taken as they are (the
    kernels' callers check their range). A function model (operands over 12
    bits) has no table: its products, wider than int32, are
    ``multiplier.products(a, b)`` (NumPy, int64)."""
    if multiplier.table is None:
        raise TypeError(
            f"{multiplier.name} is a function model: the reference indexes tables; its int64 "
            "products are multiplier.products(a, b)"
        )
    ia = jnp.asarray(a).astype(jnp.int32) & ((1 << multiplier.bits[0]) - 1)
    ib = jnp.asarray(b).astype(jnp.int32) & ((1 << multiplier.bits[1]) - 1)
    ia, ib = jnp.broadcast_arrays(ia, ib)
    return multiplier.table[ia, ib]


def integer_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, multiplier) -> jax.Array:
    """``lax.dot_general`` of integer codes with every product from the
    multiplier's table, summed exactly in int32 (the reference model of
    ``approxjax.dot_general`` under an IntegerMultiplier; memory
    ``O(G * M * N * K)``, for tests)."""
    a, b, shape = canonical(jnp.asarray(lhs), jnp.asarray(rhs), dimension_numbers)
    p = integer_multiply(a[:, :, None, :], jnp.swapaxes(b, 1, 2)[:, None, :, :], multiplier)
    return p.sum(axis=3, dtype=jnp.int32).reshape(shape)


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


def _gamma(n: int) -> float:
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def native_bound(lhs, rhs, dimension_numbers, multiplier) -> np.ndarray:
    """Largest difference between the native path's result
    (:mod:`approxjax._src.ops.native`) and the LUT kernel's, per output.

    With the float32 factors' error ``eps`` (their largest relative error
    against the table), the exact products' ``P = sum_k |p_k|`` and the
    terms' ``T = sum_k sum_t |A_t[k] B_t[k]|``: each term product and the r
    dots of K terms, then their sum in order, are within ``gamma(K + r) T``
    of the exact sum of the terms, which is within ``eps P`` of the exact
    sum of the products, which the kernel's float32 sum is within
    ``gamma(K - 1) P`` of. So the bound is ``gamma(K + r) T + (gamma(K - 1)
    + eps) P``, for products in float32's normal range (the native path does
    not flush those below ``2**-126``; the LUT kernel does).
    """
    u, v = (np.asarray(f, np.float32) for f in multiplier.factors)
    lut = np.asarray(multiplier.lut, np.float64)
    m = multiplier.mantissa_bits
    eps = float32_error(lut, u, v)
    a, b, shape = canonical(jnp.asarray(lhs), jnp.asarray(rhs), dimension_numbers)
    p = np.asarray(products(lhs, rhs, dimension_numbers, multiplier.lut), np.float64)
    k, r = p.shape[-1], u.shape[0]

    def magnitudes(x, f):  # |A_t| per term: 2**e |f_t[i]|, 0 for zeros and subnormals
        x = np.asarray(x, np.float32)
        bits = x.view(np.uint32)
        e = ((bits >> 23) & 0xFF).astype(np.int64)
        i = ((bits & 0x7FFFFF) >> (23 - m)).astype(np.int64)
        scale = np.where(e > 0, np.ldexp(1.0, e - 127), 0.0)
        return np.abs(f.astype(np.float64)[:, i]) * scale  # (r, ...)

    ta, tb = magnitudes(a, u), magnitudes(b, v)
    terms = np.einsum("tgmk,tgkn->gmn", ta, tb)
    bound = _gamma(k + r) * terms + (_gamma(max(k - 1, 0)) + eps) * np.abs(p).sum(-1)
    return bound.reshape(shape)


def sequential_dot_general(
    lhs: jax.Array, rhs: jax.Array, dimension_numbers: Sequence, lut_or_arithmetic
) -> np.ndarray:
    """The kernels' exact summation order, in NumPy: products in order of k,
    summed from -0.0 in blocks of ``SUM_BLOCK`` consecutive k, then the block
    sums added in order (``xla_ffi/approx_multiply.h``, ``kSumBlock``); each
    addition IEEE float32 round-to-nearest-even, subnormal sums kept.

    ``lut_or_arithmetic`` is a table, or an :class:`~approxjax.Arithmetic`:
    then the operands are converted to its formats, the products are the
    table's (or IEEE float32 products) rounded to its product format, and
    every addition rounds the exact sum once to its accumulator format (or
    goes through its adder), as :mod:`approxjax._src.arithmetic.arithmetic`
    states.

    Slow; for bit-exact checks of small GEMMs.
    """
    from approxjax._src.arithmetic.arithmetic import Arithmetic

    arith = lut_or_arithmetic if isinstance(lut_or_arithmetic, Arithmetic) else None
    _, _, shape = canonical(lhs, rhs, dimension_numbers)
    if arith is None:
        p = np.asarray(products(lhs, rhs, dimension_numbers, lut_or_arithmetic), np.float32)
        add = None
    else:
        p, add = _arithmetic_products(lhs, rhs, dimension_numbers, arith)
    if p.shape[-1] == 0:
        return np.zeros(p.shape[:-1], np.float32).reshape(shape)
    total = None
    depth = p.shape[-1]
    with np.errstate(invalid="ignore", over="ignore"):
        for b, k0 in enumerate(range(0, depth, SUM_BLOCK)):
            acc = np.full(p.shape[:-1], -0.0, np.float32)
            for k in range(k0, min(k0 + SUM_BLOCK, depth)):
                acc = acc + p[..., k] if add is None else add(acc, p[..., k], k)
            if total is None:
                total = acc
            else:
                total = total + acc if add is None else add(total, acc, depth + b)
    return total.reshape(shape)


def round_to_format(x: np.ndarray, fmt, rounding: str, rnd: np.ndarray | None = None) -> np.ndarray:
    """Exact values ``x`` (float64) rounded to ``fmt``, as float32 (NumPy; the
    rule of :mod:`approxjax.formats`, and RoundToFormat in
    ``xla_ffi/accumulate.h``). ``rnd``: 32 random bits per value (stochastic)."""
    x = np.asarray(x, np.float64)
    out = np.empty(x.shape, np.float32)
    neg = np.signbit(x)
    a = np.abs(x)
    nan, inf, zero = np.isnan(x), np.isinf(x), a == 0
    normal = ~(nan | inf | zero)
    mant, e = np.frexp(np.where(normal, a, 1.0))
    e = e - 1
    q = np.maximum(e, fmt.emin) - fmt.mantissa_bits
    scaled = np.ldexp(np.where(normal, a, 0.0), -q)
    whole = np.floor(scaled)
    frac = scaled - whole
    if rounding == "toward_zero":
        up = np.zeros(x.shape, bool)
    elif rounding == "away_from_zero":
        up = frac > 0
    elif rounding == "stochastic":
        up = (frac > 0) & (np.asarray(rnd, np.float64) < frac * 4294967296.0)
    else:
        up = (frac > 0.5) | ((frac == 0.5) & (np.fmod(whole, 2.0) == 1.0))
    r = np.ldexp(whole + up, q)
    if not fmt.subnormals:
        r = np.where(r < fmt.smallest_normal, 0.0, r)
    big = r > fmt.max
    if rounding == "toward_zero" or fmt.overflow == "saturate":
        over = fmt.max
    else:
        over = np.nan if fmt.overflow == "nan" else np.inf
    r = np.where(big, over, r)
    if fmt.has_inf:
        inf_value = np.inf
    else:
        inf_value = np.nan if fmt.overflow == "nan" else fmt.max
    r = np.where(inf, inf_value, r)
    r = np.where(zero, 0.0, r)
    out[...] = np.where(neg, -r, r)
    if fmt.nan != "none":
        out[nan] = np.nan
    else:
        out[nan] = np.where(neg[nan], 0.0, -0.0)
    out[np.isnan(out)] = np.float32(np.nan)  # one NaN for all: no sign
    return out


def _sum_to_odd(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The exact sums x + y rounded to odd at double precision (SumToOdd)."""
    a, b = x.astype(np.float64), y.astype(np.float64)
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    bits = s.view(np.uint64).copy()
    fix = np.isfinite(s) & (err != 0) & ((bits & 1) == 0)
    toward = (err > 0) == (s > 0)
    bits = np.where(fix & toward, bits + 1, np.where(fix & ~toward, bits - 1, bits))
    return bits.view(np.float64)


def _loa_sum(x: np.ndarray, y: np.ndarray, fmt, bits: int) -> np.ndarray:
    """The lower-part OR adder's exact result (LoaSum), elementwise."""
    out = np.empty(x.shape, np.float64)
    for idx in np.ndindex(x.shape):
        a, b = float(x[idx]), float(y[idx])
        if not (np.isfinite(a) and np.isfinite(b)):
            out[idx] = a + b
            continue
        if a == 0 or b == 0:
            out[idx] = (a + b) if a == 0 and b == 0 else (b if a == 0 else a)
            continue
        e = max(np.frexp(a)[1], np.frexp(b)[1]) - 1
        q = max(e, fmt.emin) - fmt.mantissa_bits
        ax = int(np.floor(np.ldexp(abs(a), -q)))
        ay = int(np.floor(np.ldexp(abs(b), -q)))
        if np.signbit(a) == np.signbit(b):
            low = (1 << bits) - 1
            mag, neg = (((ax >> bits) + (ay >> bits)) << bits) | ((ax | ay) & low), np.signbit(a)
        else:
            mag = abs(ax - ay)
            neg = np.signbit(a) if ax >= ay else np.signbit(b)
            neg = neg and mag != 0
        out[idx] = -np.ldexp(float(mag), q) if neg else np.ldexp(float(mag), q)
    return out


def _random_bits(seed: int, g, i, n, k) -> np.ndarray:
    """RandomBits of xla_ffi/accumulate.h, in NumPy (uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        u = np.uint64
        z = u(seed) ^ (u(g) * u(0x9E3779B97F4A7C15))
        z = z ^ (np.asarray(i, np.uint64) * u(0xBF58476D1CE4E5B9) + (z << u(6)) + (z >> u(2)))
        z = z ^ (np.asarray(n, np.uint64) * u(0x94D049BB133111EB) + (z << u(6)) + (z >> u(2)))
        z = z ^ (u(k) * u(0x2545F4914F6CDD1D) + (z << u(6)) + (z >> u(2)))
        z = (z ^ (z >> u(30))) * u(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u(27))) * u(0x94D049BB133111EB)
        z = z ^ (z >> u(31))
        return (z >> u(32)).astype(np.uint32)


def _arithmetic_products(lhs, rhs, dimension_numbers, arith):
    """The products of a dot_general under an Arithmetic (G, M, N, K), and the
    addition of its accumulator."""
    from approxjax._src.arithmetic.arithmetic import LOA, CAdder, fold_in_key, operand_keys
    from approxjax._src.arithmetic.formats import Format, convert

    spec = arith.spec
    # The forward GEMM's noise: its key folded with role 0, as the kernels do.
    key = fold_in_key(arith.key, 0) if spec.stochastic else None
    ka, kb, noise = operand_keys(key, spec)
    a, b, _ = canonical(jnp.asarray(lhs), jnp.asarray(rhs), dimension_numbers)
    if spec.lhs is not None:
        a = convert(a, spec.lhs, spec.operand_rounding, ka)
    if spec.rhs is not None:
        b = convert(b, spec.rhs, spec.operand_rounding, kb)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if arith.multiplier is None:
        p = a[:, :, None, :] * np.swapaxes(b, 1, 2)[:, None, :, :]
    else:
        p = np.asarray(
            multiply(a[:, :, None, :], np.swapaxes(b, 1, 2)[:, None, :, :], arith.multiplier.lut),
            np.float32,
        )
    seed = 0
    if noise is not None:
        w = np.asarray(noise, np.uint32)
        seed = (int(w[0]) << 32) | int(w[1])
    g_, i_, n_ = np.meshgrid(*(np.arange(d) for d in p.shape[:-1]), indexing="ij")
    if spec.product is not None:
        rounded = np.empty(p.shape, np.float32)
        for k in range(p.shape[-1]):
            rnd = _random_bits(seed ^ 0x5BD1E995, g_, i_, n_, k)
            rounded[..., k] = round_to_format(p[..., k], spec.product, spec.product_rounding, rnd)
        p = rounded
    acc_fmt = spec.accumulator or Format(exponent_bits=8, mantissa_bits=23, name="float32")
    adder = spec.adder

    def add(total, x, k):
        rnd = _random_bits(seed, g_, i_, n_, k)
        if isinstance(adder, CAdder):
            import ctypes

            fn = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_float, ctypes.c_float)(adder.address)
            out = np.empty(total.shape, np.float32)
            for idx in np.ndindex(total.shape):
                out[idx] = fn(float(total[idx]), float(x[idx]))
            return out
        if isinstance(adder, LOA):
            exact = _loa_sum(total, x, acc_fmt, adder.bits)
        elif spec.accumulator is None and spec.accumulator_rounding == "nearest_even":
            return (total + x).astype(np.float32)
        else:
            exact = _sum_to_odd(total, x)
        return round_to_format(exact, acc_fmt, spec.accumulator_rounding, rnd)

    return p, add
