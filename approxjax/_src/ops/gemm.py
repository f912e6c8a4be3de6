"""The custom_vjp core of every approximate GEMM: a batched matmul whose
forward pass and both gradients run as approximate GEMMs.

* forward:          ``out  = a @ b``      under the forward arithmetic;
* input gradient:   ``da   = g @ b^T``    under the input-gradient arithmetic;
* weight gradient:  ``db   = a^T @ g``    under the weight-gradient arithmetic.

In each GEMM the first operand is the "lhs" of its arithmetic (converted to
its ``lhs`` format, indexing the table's rows): ``a`` in the forward pass,
``g`` in the input gradient, ``a^T`` in the weight gradient; the second is
the "rhs". Operands are float32 ``(G, M, K)`` / ``(G, K, N)``, or stored
transposed as ``(G, K, M)`` / ``(G, N, K)`` (:class:`GemmConfig`), which the
kernels read in place. Each arithmetic travels as a static
:class:`~approxjax._src.arithmetic.arithmetic.GemmSpec` (in the config) and
its leaves (table, facts, key). :mod:`approxjax._src.ops.dot_general` and
:mod:`approxjax._src.ops.conv` build on :func:`approx_bmm`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from approxjax._src.arithmetic.arithmetic import (
    GemmSpec,
    as_arithmetic,
    convert_operands,
    fold_in_key,
    kernel_attribute,
    sized_to_operands,
)
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.kernels import ffi
from approxjax._src.kernels.options import DEFAULT, KernelOptions
from approxjax._src.ops import native

GradMode = Literal["forward", "exact", "own"]
Specs = tuple[GemmSpec | None, GemmSpec | None, GemmSpec | None]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmConfig:
    """Static part of an approximate GEMM: the arithmetic of the forward pass
    and both gradients (None: exact), which gradients reuse the forward one,
    whether each runs natively (on the CPU, elsewhere: see
    :mod:`approxjax._src.ops.native`), and whether the operands are stored
    transposed."""

    input_grad: GradMode
    weight_grad: GradMode
    specs: Specs = (None, None, None)
    natives: tuple[tuple[bool, bool], ...] = ((False, False),) * 3
    transpose_a: bool = False
    transpose_b: bool = False
    options: KernelOptions = DEFAULT


def kernel_arithmetic(value: Any):
    """The Arithmetic a multiplier argument (a Multiplier, an Arithmetic or
    None) runs as: its table subsampled to narrow operand formats
    (:func:`~approxjax._src.arithmetic.arithmetic.sized_to_operands`)."""
    arith = as_arithmetic(value)
    return None if arith is None else sized_to_operands(arith)


def split(value: Any) -> tuple[GemmSpec | None, tuple | None]:
    """The static spec and the leaves (lut, facts, key, factors) of a
    multiplier argument (a Multiplier, an Arithmetic or None)."""
    arith = kernel_arithmetic(value)
    if arith is None:
        return None, None
    mult = arith.multiplier
    leaves = (
        None if mult is None else mult.lut,
        None if mult is None else mult.facts,
        arith.key,
        None if mult is None else mult.factors,
    )
    return arith.spec, leaves


def grad_split(value: Any) -> tuple[GradMode, GemmSpec | None, tuple | None]:
    """The mode, spec and leaves of a gradient multiplier ("forward", None, or
    a Multiplier / Arithmetic)."""
    if isinstance(value, str):
        return "forward", None, None
    if value is None:
        return "exact", None, None
    spec, leaves = split(value)
    return "own", spec, leaves


def pick(config: GemmConfig, tables: tuple, i: int):
    """(spec, leaves, natives) of GEMM ``i`` (0 forward, 1 input gradient, 2
    weight gradient)."""
    mode = "own" if i == 0 else (config.input_grad if i == 1 else config.weight_grad)
    j = {"forward": 0, "own": i, "exact": None}[mode]
    if j is None:
        return None, None, (False, False)
    return config.specs[j], tables[j], config.natives[j]


def zero_cotangents(tables: tuple) -> tuple:
    """Tables, facts, keys and factors are not differentiated."""
    return tuple(
        None if t is None else jax.tree.map(lambda x: None if _int(x) else jnp.zeros_like(x), t)
        for t in tables
    )


def _int(x) -> bool:
    dtype = jax.typeof(x).dtype
    return not jnp.issubdtype(dtype, jnp.floating)


def exact_bmm(a, b, transpose_a=False, transpose_b=False):
    """The same batched GEMM exactly in float32 (XLA's dot, no TF32)."""
    ca = 1 if transpose_a else 2
    cb = 2 if transpose_b else 1
    return lax.dot_general(a, b, (((ca,), (cb,)), ((0,), (0,))), precision=lax.Precision.HIGHEST)


_ONE = None


def one_table():
    """A 1x1 table (m = 0) and its facts: the kernels' operand where products
    are IEEE float32 products and no table is read."""
    global _ONE
    if _ONE is None:
        with jax.ensure_compile_time_eval():  # first used inside a trace, perhaps
            one = Multiplier(np.ones((1, 1), np.float32), name="ieee")
            _ONE = (np.asarray(one.lut), np.asarray(one.facts))
    return jnp.asarray(_ONE[0]), jnp.asarray(_ONE[1])


def bmm(
    a,
    b,
    spec,
    leaves,
    transpose_a=False,
    transpose_b=False,
    options=DEFAULT,
    role=0,
    natives=(False, False),
):
    """One batched GEMM under an arithmetic (None: exact), not differentiated.
    ``role`` (0 forward, 1 input gradient, 2 weight gradient) is folded into
    the stochastic key: the three GEMMs of one operation draw independent
    noise. ``natives``: whether it runs natively on the CPU and elsewhere."""
    if spec is None:
        return exact_bmm(a, b, transpose_a, transpose_b)
    lut, facts, key, factors = leaves
    key = fold_in_key(key, role) if spec.stochastic else None
    a, b, noise = convert_operands(a, b, spec, key)
    if not spec.has_multiplier and spec.default_sums:
        return exact_bmm(a, b, transpose_a, transpose_b)  # IEEE products, float32 sums
    if not spec.has_multiplier:
        lut, facts = one_table()
    if any(natives):
        m = spec.mantissa_bits

        def natively(a, b):
            return native.native_bmm(a, b, factors, m, transpose_a, transpose_b)

        def by_table(a, b):
            return _kernel_bmm(a, b, lut, facts, noise, transpose_a, transpose_b, options, spec)

        return native.by_platform(*natives, natively, by_table, a, b)
    return _kernel_bmm(a, b, lut, facts, noise, transpose_a, transpose_b, options, spec)


def _kernel_bmm(a, b, lut, facts, noise, transpose_a, transpose_b, options, spec):
    """The GEMM by the LUT kernel (``approxjax_gemm``)."""
    return ffi.gemm(
        a,
        b,
        lut[None],
        facts[None],
        None if noise is None else noise[None],
        transpose_lhs=transpose_a,
        transpose_rhs=transpose_b,
        options=options,
        arithmetic=kernel_attribute(spec),
    )


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def approx_bmm(config: GemmConfig, a, b, tables):
    """``a @ b`` under the forward arithmetic; ``tables`` holds the forward,
    input-gradient and weight-gradient leaves (None where unused)."""
    spec, leaves, natives = pick(config, tables, 0)
    return bmm(
        a, b, spec, leaves, config.transpose_a, config.transpose_b, config.options, 0, natives
    )


def _approx_bmm_fwd(config, a, b, tables):
    return approx_bmm(config, a, b, tables), (a, b, tables)


def _approx_bmm_bwd(config, residuals, g):
    a, b, tables = residuals
    ta, tb, opts = config.transpose_a, config.transpose_b, config.options
    # dA = g (G,M,N) @ B^T: b is stored (K, N) = (out cols, contraction), or
    # (N, K) when transposed. Products keep their operand order (g, b).
    spec, leaves, natives = pick(config, tables, 1)
    da = bmm(g, b, spec, leaves, transpose_b=not tb, options=opts, role=1, natives=natives)
    # dB = A^T @ g: a is stored (M, K) = (contraction, out rows), or (K, M).
    spec, leaves, natives = pick(config, tables, 2)
    db = bmm(a, g, spec, leaves, transpose_a=not ta, options=opts, role=2, natives=natives)
    # Cotangents in the operands' stored layouts.
    da = jnp.swapaxes(da, 1, 2) if ta else da
    db = jnp.swapaxes(db, 1, 2) if tb else db
    return da, db, zero_cotangents(tables)


approx_bmm.defvjp(_approx_bmm_fwd, _approx_bmm_bwd)


def gemm_parts(multiplier, input_grad_multiplier, weight_grad_multiplier, method=None):
    """The modes, specs, leaves and native choices of a GEMM's three
    multiplier arguments; ``method`` (None: each arithmetic's own) as
    :func:`approxjax._src.ops.native.choose` says.

    Raises:
      ValueError: ``method="native"`` (given, or an arithmetic's) where the
        native path cannot run.
    """
    spec, leaves = split(multiplier)
    ig_mode, ig_spec, ig_leaves = grad_split(input_grad_multiplier)
    wg_mode, wg_spec, wg_leaves = grad_split(weight_grad_multiplier)
    natives = []
    values = (multiplier, input_grad_multiplier, weight_grad_multiplier)
    for value, s in zip(values, (spec, ig_spec, wg_spec), strict=True):
        arith = None if isinstance(value, str) else kernel_arithmetic(value)
        if arith is None or s is None:
            natives.append((False, False))
        else:
            natives.append(native.choose(method or s.method, s, arith.multiplier))
    return (
        (ig_mode, wg_mode),
        (spec, ig_spec, wg_spec),
        (leaves, ig_leaves, wg_leaves),
        tuple(natives),
    )
