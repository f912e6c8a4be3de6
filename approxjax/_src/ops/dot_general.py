"""Approximate ``dot_general``: ``lax.dot_general`` with every product simulated.

The operands are laid out as a batched GEMM (``(G, M, K)`` and ``(G, K, N)``,
or read transposed where they already are) and multiplied by the custom_vjp
core of :mod:`approxjax._src.ops.gemm`, whose backward pass is made of
approximate GEMMs too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from approxjax._src.arithmetic.arithmetic import Arithmetic, Method, check_method
from approxjax._src.arithmetic.integer import IntegerMultiplier
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.arithmetic.quantization import Quantized
from approxjax._src.kernels import ffi
from approxjax._src.kernels.options import KernelOptions, check_options
from approxjax._src.ops.checks import (
    INTEGER_KINDS,
    check_dimension_numbers,
    check_multiplier,
    check_operand,
)
from approxjax._src.ops.gemm import GemmConfig, approx_bmm, gemm_parts
from approxjax._src.ops.integer_gemm import integer_dot_general
from approxjax._src.ops.quantized_gemm import quantized_dot_general

GradMultiplier = Multiplier | Arithmetic | None | Literal["forward"]


def dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: tuple[
        tuple[Sequence[int], Sequence[int]], tuple[Sequence[int], Sequence[int]]
    ],
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    multiplier: Multiplier | Arithmetic | IntegerMultiplier | None = None,
    input_grad_multiplier: GradMultiplier = "forward",
    weight_grad_multiplier: GradMultiplier = "forward",
    options: KernelOptions | None = None,
    method: Method | None = None,
) -> jax.Array:
    """``jax.lax.dot_general`` with every product through a simulated multiplier.

    Same signature and semantics as :func:`jax.lax.dot_general`, plus the
    multipliers. Operands are float32, bfloat16 or float16 (converted exactly
    to float32); products are summed in float32 (or as an
    :class:`~approxjax.Arithmetic` says: operand formats, product rounding,
    accumulator, adder); the result has ``preferred_element_type`` if given,
    else the operands' (promoted) type.

    Args:
      lhs, rhs: operands.
      dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))``.
      precision: accepted for compatibility; it has no effect on approximate
        products (with ``multiplier=None`` it is passed to XLA).
      preferred_element_type: output dtype.
      multiplier: the forward multiplier (a :class:`~approxjax.Multiplier` or
        an :class:`~approxjax.Arithmetic`); ``None`` means exact float32 and
        uses XLA's own dot (and then the gradient multipliers must be left
        alone). An :class:`~approxjax.IntegerMultiplier` on integer arrays
        of operand codes returns the exact int32 sums of its table's
        products (``preferred_element_type`` may cast them; see
        :mod:`approxjax._src.ops.integer_gemm`); on float operands it
        quantizes them (an :class:`~approxjax.Quantized` with its defaults,
        or the one given: scales, zero points, gradient estimator).
      input_grad_multiplier: multiplier of ``d lhs = g @ rhs^T``: ``"forward"``,
        a Multiplier or Arithmetic, or ``None`` for exact.
      weight_grad_multiplier: multiplier of ``d rhs = lhs^T @ g``, likewise.
      options: how the kernels compute (:class:`~approxjax.KernelOptions`;
        None: the defaults); never changes a result.
      method: ``"lut"`` (the LUT kernel), ``"native"`` (for a multiplier with
        low-rank factors, ``Multiplier.rank``: r XLA dots of transformed
        operands; results within :func:`approxjax.reference.native_bound` of
        the kernel's, gradients by the same rules), ``"auto"`` (native where
        it can run and was measured faster) or None: each arithmetic's own
        (``Arithmetic(method=...)``; a bare Multiplier's is ``"auto"``).

    Returns:
      The product, shaped like ``lax.dot_general``'s (batch, lhs free, rhs free).

    Raises:
      TypeError: an operand is not float32/bfloat16/float16, or a multiplier is
        not a Multiplier or an Arithmetic.
      ValueError: malformed dimension numbers or mismatched sizes;
        ``method="native"`` for a multiplier without factors (the message
        names the rank found) or an arithmetic that rounds its sums.
    """
    if isinstance(multiplier, INTEGER_KINDS):
        if not (isinstance(input_grad_multiplier, str) and isinstance(weight_grad_multiplier, str)):
            raise ValueError(
                "integer multipliers take no gradient multipliers: integer codes have no "
                "gradient, and approxjax.Quantized(..., gradient=...) chooses a quantized "
                "GEMM's"
            )
        if method not in (None, "auto", "lut"):
            raise ValueError(f"integer multipliers run by their tables; got method={method!r}")
        ints = [jnp.issubdtype(jnp.result_type(x), jnp.integer) for x in (lhs, rhs)]
        if ints[0] != ints[1]:
            raise TypeError(
                f"lhs is {jnp.result_type(lhs)} and rhs {jnp.result_type(rhs)}: give integer "
                "operand codes for both, or float operands for both (quantized)"
            )
        if isinstance(multiplier, IntegerMultiplier) and ints[0]:
            return integer_dot_general(
                lhs,
                rhs,
                dimension_numbers,
                multiplier,
                options=options,
                preferred_element_type=preferred_element_type,
            )
        if isinstance(multiplier, IntegerMultiplier):  # float operands: quantized, STE
            multiplier = Quantized(multiplier)
        lhs = check_operand("lhs", lhs)
        rhs = check_operand("rhs", rhs)
        check_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        return quantized_dot_general(
            lhs,
            rhs,
            dimension_numbers,
            multiplier,
            options=check_options(options),
            preferred_element_type=preferred_element_type,
        )
    lhs = check_operand("lhs", lhs)
    rhs = check_operand("rhs", rhs)
    dimension_numbers = check_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    check_multiplier("multiplier", multiplier, allow_forward=False)
    check_multiplier("input_grad_multiplier", input_grad_multiplier, allow_forward=True)
    check_multiplier("weight_grad_multiplier", weight_grad_multiplier, allow_forward=True)
    options = check_options(options)
    method = check_method(method)
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
    (ig_mode, wg_mode), specs, tables, natives = gemm_parts(
        multiplier, input_grad_multiplier, weight_grad_multiplier, method
    )

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
    config = GemmConfig(
        input_grad=ig_mode,
        weight_grad=wg_mode,
        specs=specs,
        natives=natives,
        transpose_a=ta,
        transpose_b=tb,
        options=options,
    )
    # Inside shard_map, a replicated operand joins the others' varying axes here,
    # outside the custom_vjp, so JAX's AD sums its cotangent over those axes.
    a, b = ffi.same_varying_axes(a, b)
    out = approx_bmm(config, a, b, tables)
    return out.reshape(batch + lfree + rfree).astype(out_dtype)
