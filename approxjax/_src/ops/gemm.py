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

GradMode = Literal["forward", "exact", "own"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmConfig:
    """Static part of an approximate GEMM: which gradients are exact or reuse
    the forward table, and whether the operands are stored transposed."""

    input_grad: GradMode
    weight_grad: GradMode
    transpose_a: bool = False
    transpose_b: bool = False


def grad_mode_and_lut(value: Any) -> tuple[GradMode, Any]:
    """The mode and table of a gradient multiplier ("forward", None or a Multiplier)."""
    if isinstance(value, str):
        return "forward", None
    if value is None:
        return "exact", None
    return "own", value.lut


def grad_lut(mode: GradMode, luts: tuple, i: int):
    """The table of gradient ``i`` (1: input, 2: weight) under ``mode``."""
    return {"forward": luts[0], "exact": None, "own": luts[i]}[mode]


def zero_cotangents(luts: tuple) -> tuple:
    """Tables are not differentiated: their cotangents are zeros (or None)."""
    return tuple(None if t is None else jnp.zeros_like(t) for t in luts)


def exact_bmm(a, b, transpose_a=False, transpose_b=False):
    """The same batched GEMM exactly in float32 (XLA's dot, no TF32)."""
    ca = 1 if transpose_a else 2
    cb = 2 if transpose_b else 1
    return lax.dot_general(a, b, (((ca,), (cb,)), ((0,), (0,))), precision=lax.Precision.HIGHEST)


def bmm(a, b, lut, transpose_a=False, transpose_b=False):
    """One batched GEMM under ``lut`` (None: exact), not differentiated."""
    if lut is None:
        return exact_bmm(a, b, transpose_a, transpose_b)
    return ffi.gemm(a, b, lut[None], transpose_lhs=transpose_a, transpose_rhs=transpose_b)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def approx_bmm(config: GemmConfig, a, b, luts):
    """``a @ b`` under ``luts[0]``; ``luts`` holds the forward, input-gradient
    and weight-gradient tables (None where unused)."""
    return bmm(a, b, luts[0], config.transpose_a, config.transpose_b)


def _approx_bmm_fwd(config, a, b, luts):
    return approx_bmm(config, a, b, luts), (a, b, luts)


def _approx_bmm_bwd(config, residuals, g):
    a, b, luts = residuals
    ta, tb = config.transpose_a, config.transpose_b
    # dA = g (G,M,N) @ B^T: b is stored (K, N) = (out cols, contraction), or
    # (N, K) when transposed. Products keep their operand order (g, b).
    da = bmm(g, b, grad_lut(config.input_grad, luts, 1), transpose_b=not tb)
    # dB = A^T @ g: a is stored (M, K) = (contraction, out rows), or (K, M).
    db = bmm(a, g, grad_lut(config.weight_grad, luts, 2), transpose_a=not ta)
    # Cotangents in the operands' stored layouts.
    da = jnp.swapaxes(da, 1, 2) if ta else da
    db = jnp.swapaxes(db, 1, 2) if tb else db
    return da, db, zero_cotangents(luts)


approx_bmm.defvjp(_approx_bmm_fwd, _approx_bmm_bwd)
