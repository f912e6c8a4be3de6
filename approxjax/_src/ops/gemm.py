"""The custom_vjp core of every approximate GEMM: a batched matmul whose
forward pass and both gradients run as approximate GEMMs.

* forward:          ``out  = a @ b``      under the forward table;
* input gradient:   ``da   = g @ b^T``    under the input-gradient table;
* weight gradient:  ``db   = a^T @ g``    under the weight-gradient table.

In each GEMM the first operand indexes the table's rows: ``a`` in the forward
pass, ``g`` in the input gradient, ``a^T`` in the weight gradient. Operands
are float32 ``(G, M, K)`` / ``(G, K, N)``, or stored transposed as
``(G, K, M)`` / ``(G, N, K)`` (:class:`GemmConfig`), which the kernels read
in place. :mod:`approxjax._src.ops.dot_general` and
:mod:`approxjax._src.ops.conv` build on :func:`approx_bmm`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax

from approxjax._src.kernels import ffi
from approxjax._src.kernels.options import DEFAULT, KernelOptions

GradMode = Literal["forward", "exact", "own"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmConfig:
    """Static part of an approximate GEMM: which gradients are exact or reuse
    the forward table, and whether the operands are stored transposed."""

    input_grad: GradMode
    weight_grad: GradMode
    transpose_a: bool = False
    transpose_b: bool = False
    options: KernelOptions = DEFAULT


def table_of(multiplier) -> tuple[jax.Array, jax.Array]:
    """What the kernels read of a multiplier: its table and the table's facts."""
    return (multiplier.lut, multiplier.facts)


def grad_mode_and_table(value: Any) -> tuple[GradMode, Any]:
    """The mode and table of a gradient multiplier ("forward", None or a Multiplier)."""
    if isinstance(value, str):
        return "forward", None
    if value is None:
        return "exact", None
    return "own", table_of(value)


def grad_table(mode: GradMode, tables: tuple, i: int):
    """The table of gradient ``i`` (1: input, 2: weight) under ``mode``."""
    return {"forward": tables[0], "exact": None, "own": tables[i]}[mode]


def zero_cotangents(tables: tuple) -> tuple:
    """Tables are not differentiated: their cotangents are zeros (None for
    the integer facts)."""
    return tuple(None if t is None else (jnp.zeros_like(t[0]), None) for t in tables)


def exact_bmm(a, b, transpose_a=False, transpose_b=False):
    """The same batched GEMM exactly in float32 (XLA's dot, no TF32)."""
    ca = 1 if transpose_a else 2
    cb = 2 if transpose_b else 1
    return lax.dot_general(a, b, (((ca,), (cb,)), ((0,), (0,))), precision=lax.Precision.HIGHEST)


def bmm(a, b, table, transpose_a=False, transpose_b=False, options: KernelOptions = DEFAULT):
    """One batched GEMM under ``table`` ((lut, facts); None: exact), not differentiated."""
    if table is None:
        return exact_bmm(a, b, transpose_a, transpose_b)
    lut, facts = table
    return ffi.gemm(
        a,
        b,
        lut[None],
        facts[None],
        transpose_lhs=transpose_a,
        transpose_rhs=transpose_b,
        options=options,
    )


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def approx_bmm(config: GemmConfig, a, b, tables):
    """``a @ b`` under ``tables[0]``; ``tables`` holds the forward,
    input-gradient and weight-gradient tables (each (lut, facts), or None
    where unused)."""
    return bmm(a, b, tables[0], config.transpose_a, config.transpose_b, config.options)


def _approx_bmm_fwd(config, a, b, tables):
    return approx_bmm(config, a, b, tables), (a, b, tables)


def _approx_bmm_bwd(config, residuals, g):
    a, b, tables = residuals
    ta, tb, opts = config.transpose_a, config.transpose_b, config.options
    # dA = g (G,M,N) @ B^T: b is stored (K, N) = (out cols, contraction), or
    # (N, K) when transposed. Products keep their operand order (g, b).
    da = bmm(g, b, grad_table(config.input_grad, tables, 1), transpose_b=not tb, options=opts)
    # dB = A^T @ g: a is stored (M, K) = (contraction, out rows), or (K, M).
    db = bmm(a, g, grad_table(config.weight_grad, tables, 2), transpose_a=not ta, options=opts)
    # Cotangents in the operands' stored layouts.
    da = jnp.swapaxes(da, 1, 2) if ta else da
    db = jnp.swapaxes(db, 1, 2) if tb else db
    return da, db, zero_cotangents(tables)


approx_bmm.defvjp(_approx_bmm_fwd, _approx_bmm_bwd)
