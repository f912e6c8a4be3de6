"""Approximate ``dot_general`` and elementwise ``multiply``.

Every public op checks its inputs in Python, then reaches the kernels through a
``jax.custom_vjp`` whose backward pass is made of approximate GEMMs too, as
hardware that trains with the multiplier computes them:

* forward:          ``out  = lhs @ rhs``      under ``multiplier``;
* input gradient:   ``dlhs = g @ rhs^T``      under ``input_grad_multiplier``;
* weight gradient:  ``drhs = lhs^T @ g``      under ``weight_grad_multiplier``.

Each gradient multiplier is ``"forward"`` (the default: the forward
multiplier), another :class:`~approxjax.Multiplier`, or ``None`` (exact
float32). In each GEMM the first operand indexes the table's rows: ``lhs`` in
the forward pass, ``g`` in the input gradient, ``lhs^T`` in the weight
gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from approxjax import _ffi
from approxjax.multipliers import Multiplier
from approxjax.policy import _check_choice

GradMultiplier = Multiplier | None | Literal["forward"]

_ACCEPTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _check_operand(name: str, x: Any) -> jax.Array:
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        x = jnp.asarray(x)
    dtype = jnp.dtype(x.dtype)
    if dtype not in [jnp.dtype(d) for d in _ACCEPTED_DTYPES]:
        raise TypeError(
            f"{name} must be float32, bfloat16 or float16; got {dtype} "
            "(convert integers and float64 explicitly; complex is not supported)"
        )
    return x


def _check_multiplier(name: str, value: Any, allow_forward: bool) -> None:
    _check_choice(name, value, allow_forward)
    if isinstance(value, Multiplier) and value.lut.ndim != 2:
        raise ValueError(
            f"{name} is a stack of multipliers {value.batch_shape}; map over it with "
            "jax.vmap (in_axes=0) so each call sees one table"
        )


def _check_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers):
    try:
        (lc, rc), (lb, rb) = dimension_numbers
        lc, rc, lb, rb = (tuple(int(d) for d in x) for x in (lc, rc, lb, rb))
    except (TypeError, ValueError) as e:
        raise ValueError(
            "dimension_numbers must be ((lhs_contracting, rhs_contracting), "
            f"(lhs_batch, rhs_batch)) of int sequences; got {dimension_numbers!r}"
        ) from e
    for side, shape, dims in (
        ("lhs", lhs_shape, lc + lb),
        ("rhs", rhs_shape, rc + rb),
    ):
        for d in dims:
            if not 0 <= d < len(shape):
                raise ValueError(
                    f"dimension_numbers name {side} dimension {d}, but {side} has rank "
                    f"{len(shape)} (shape {tuple(shape)})"
                )
        if len(set(dims)) != len(dims):
            raise ValueError(
                f"dimension_numbers use a {side} dimension twice: contracting+batch = {dims}"
            )
    if len(lc) != len(rc):
        raise ValueError(f"lhs and rhs need as many contracting dimensions; got {lc} and {rc}")
    if len(lb) != len(rb):
        raise ValueError(f"lhs and rhs need as many batch dimensions; got {lb} and {rb}")
    for kind, ld, rd in (("contracting", lc, rc), ("batch", lb, rb)):
        for a, b in zip(ld, rd, strict=True):
            if lhs_shape[a] != rhs_shape[b]:
                raise ValueError(
                    f"{kind} dimension sizes differ: lhs dimension {a} has size {lhs_shape[a]}, "
                    f"rhs dimension {b} has size {rhs_shape[b]} (shapes {tuple(lhs_shape)} and "
                    f"{tuple(rhs_shape)})"
                )
    return (lc, rc), (lb, rb)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _GemmConfig:
    """Static part of an approximate GEMM: which gradients are exact or reuse
    the forward table, and whether the operands are stored transposed (a as
    (G, K, M), b as (G, N, K)), which the kernels read as they are."""

    input_grad: Literal["forward", "exact", "own"]
    weight_grad: Literal["forward", "exact", "own"]
    transpose_a: bool = False
    transpose_b: bool = False


def _exact_bmm(a, b, transpose_a, transpose_b):
    ca = 1 if transpose_a else 2
    cb = 2 if transpose_b else 1
    return lax.dot_general(a, b, (((ca,), (cb,)), ((0,), (0,))), precision=lax.Precision.HIGHEST)


def _gemm(a, b, lut, transpose_a=False, transpose_b=False):
    if lut is None:
        return _exact_bmm(a, b, transpose_a, transpose_b)
    return _ffi.gemm(a, b, lut[None], transpose_lhs=transpose_a, transpose_rhs=transpose_b)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _approx_bmm(config: _GemmConfig, a, b, luts):
    return _gemm(a, b, luts[0], config.transpose_a, config.transpose_b)


def _approx_bmm_fwd(config, a, b, luts):
    return _approx_bmm(config, a, b, luts), (a, b, luts)


def _grad_lut(mode, luts, i):
    return {"forward": luts[0], "exact": None, "own": luts[i]}[mode]


def _approx_bmm_bwd(config, residuals, g):
    a, b, luts = residuals
    ta, tb = config.transpose_a, config.transpose_b
    # dA = g (G,M,N) @ B^T: b is stored (K, N) = (out cols, contraction), or
    # (N, K) when transposed. Products keep their operand order (g, b).
    da = _gemm(g, b, _grad_lut(config.input_grad, luts, 1), transpose_b=not tb)
    # dB = A^T @ g: a is stored (M, K) = (contraction, out rows), or (K, M).
    db = _gemm(a, g, _grad_lut(config.weight_grad, luts, 2), transpose_a=not ta)
    # Cotangents in the operands' stored layouts.
    da = jnp.swapaxes(da, 1, 2) if ta else da
    db = jnp.swapaxes(db, 1, 2) if tb else db
    lut_cts = tuple(None if x is None else jnp.zeros_like(x) for x in luts)
    return da, db, lut_cts


_approx_bmm.defvjp(_approx_bmm_fwd, _approx_bmm_bwd)


def _mode_and_lut(value: GradMultiplier):
    if isinstance(value, str):
        return "forward", None
    if value is None:
        return "exact", None
    return "own", value.lut


def dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: tuple[
        tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]
    ],
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    multiplier: Multiplier | None = None,
    input_grad_multiplier: GradMultiplier = "forward",
    weight_grad_multiplier: GradMultiplier = "forward",
) -> jax.Array:
    """``jax.lax.dot_general`` with every product through a simulated multiplier.

    Same signature and semantics as :func:`jax.lax.dot_general`, plus the
    multipliers. Operands are float32, bfloat16 or float16 (converted exactly
    to float32); products are summed in float32; the result has
    ``preferred_element_type`` if given, else the operands' (promoted) type.

    Args:
      lhs, rhs: operands.
      dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))``.
      precision: accepted for compatibility; it has no effect on approximate
        products (with ``multiplier=None`` it is passed to XLA).
      preferred_element_type: output dtype.
      multiplier: the forward multiplier; ``None`` means exact float32 and uses
        XLA's own dot (and then the gradient multipliers must be left alone).
      input_grad_multiplier: multiplier of ``d lhs = g @ rhs^T``: ``"forward"``,
        a :class:`Multiplier`, or ``None`` for exact.
      weight_grad_multiplier: multiplier of ``d rhs = lhs^T @ g``, likewise.

    Returns:
      The product, shaped like ``lax.dot_general``'s (batch, lhs free, rhs free).

    Raises:
      TypeError: an operand is not float32/bfloat16/float16, or a multiplier is
        not a Multiplier.
      ValueError: malformed dimension numbers or mismatched sizes.
    """
    lhs = _check_operand("lhs", lhs)
    rhs = _check_operand("rhs", rhs)
    dimension_numbers = _check_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    _check_multiplier("multiplier", multiplier, allow_forward=False)
    _check_multiplier("input_grad_multiplier", input_grad_multiplier, allow_forward=True)
    _check_multiplier("weight_grad_multiplier", weight_grad_multiplier, allow_forward=True)
    out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
    if multiplier is None:
        if not (isinstance(input_grad_multiplier, str) and isinstance(weight_grad_multiplier, str)):
            raise ValueError(
                "gradient multipliers need an approximate forward multiplier; with "
                "multiplier=None the whole dot_general is exact"
            )
        return lax.dot_general(
            lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=out_dtype
        )
    ig_mode, ig_lut = _mode_and_lut(input_grad_multiplier)
    wg_mode, wg_lut = _mode_and_lut(weight_grad_multiplier)

    (lc, rc), (lb, rb) = dimension_numbers
    lf = tuple(d for d in range(lhs.ndim) if d not in lc and d not in lb)
    rf = tuple(d for d in range(rhs.ndim) if d not in rc and d not in rb)
    batch = tuple(lhs.shape[d] for d in lb)
    lfree = tuple(lhs.shape[d] for d in lf)
    rfree = tuple(rhs.shape[d] for d in rf)
    g = int(np.prod(batch, dtype=np.int64))
    m = int(np.prod(lfree, dtype=np.int64))
    n = int(np.prod(rfree, dtype=np.int64))
    k = int(np.prod([lhs.shape[d] for d in lc], dtype=np.int64))
    # Operands already laid out as (batch, contraction, free) [lhs] or
    # (batch, free, contraction) [rhs] reach the kernel as they are, flagged
    # transposed; any other layout is transposed to (G, M, K) / (G, K, N).
    ta = lb + lf + lc != tuple(range(lhs.ndim)) and lb + lc + lf == tuple(range(lhs.ndim))
    tb = rb + rc + rf != tuple(range(rhs.ndim)) and rb + rf + rc == tuple(range(rhs.ndim))
    a = lhs.astype(jnp.float32)
    b = rhs.astype(jnp.float32)
    a = a.reshape(g, k, m) if ta else jnp.transpose(a, lb + lf + lc).reshape(g, m, k)
    b = b.reshape(g, n, k) if tb else jnp.transpose(b, rb + rc + rf).reshape(g, k, n)
    config = _GemmConfig(input_grad=ig_mode, weight_grad=wg_mode, transpose_a=ta, transpose_b=tb)
    # Inside shard_map, a replicated operand joins the others' varying axes here,
    # outside the custom_vjp, so JAX's AD sums its cotangent over those axes.
    a, b = _ffi.same_varying_axes(a, b)
    out = _approx_bmm(config, a, b, (multiplier.lut, ig_lut, wg_lut))
    return out.reshape(batch + lfree + rfree).astype(out_dtype)


@jax.custom_vjp
def _approx_multiply(a, b, lut):
    return _ffi.multiply(a, b, lut)


def _approx_multiply_fwd(a, b, lut):
    return _ffi.multiply(a, b, lut), (a, b, lut)


def _approx_multiply_bwd(residuals, g):
    a, b, lut = residuals
    return _ffi.multiply(g, b, lut), _ffi.multiply(a, g, lut), jnp.zeros_like(lut)


_approx_multiply.defvjp(_approx_multiply_fwd, _approx_multiply_bwd)


def multiply(a: jax.Array, b: jax.Array, multiplier: Multiplier | None) -> jax.Array:
    """Elementwise simulated product ``a * b`` (broadcasting), same model as dot_general.

    Its gradients are simulated products too: ``da = g * b`` and ``db = a * g``
    under the same multiplier. ``multiplier=None`` multiplies exactly.
    """
    a = _check_operand("a", a)
    b = _check_operand("b", b)
    _check_multiplier("multiplier", multiplier, allow_forward=False)
    out_dtype = jnp.result_type(a.dtype, b.dtype)
    if multiplier is None:
        return a * b
    shape = jnp.broadcast_shapes(a.shape, b.shape)
    fa = jnp.broadcast_to(a.astype(jnp.float32), shape).reshape(-1)
    fb = jnp.broadcast_to(b.astype(jnp.float32), shape).reshape(-1)
    fa, fb = _ffi.same_varying_axes(fa, fb)
    return _approx_multiply(fa, fb, multiplier.lut).reshape(shape).astype(out_dtype)
