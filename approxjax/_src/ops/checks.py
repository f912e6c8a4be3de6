"""Input checks shared by the ops: each raises before any kernel runs, and
its message names the bad value and what was expected."""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp

from approxjax._src.arithmetic.arithmetic import Arithmetic
from approxjax._src.arithmetic.integer import IntegerMultiplier
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.arithmetic.quantization import Quantized

FORWARD = "forward"
INTEGER_KINDS = (IntegerMultiplier, Quantized)
_ACCEPTED_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def check_operand(name: str, x: Any) -> jax.Array:
    """``x`` as an array of float32, bfloat16 or float16; TypeError otherwise."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        x = jnp.asarray(x)
    dtype = jnp.dtype(x.dtype)
    if dtype not in [jnp.dtype(d) for d in _ACCEPTED_DTYPES]:
        raise TypeError(
            f"{name} must be float32, bfloat16 or float16; got {dtype} "
            "(convert integers and float64 explicitly; complex is not supported)"
        )
    return x


def check_choice(name: str, value: Any, allow_forward: bool) -> None:
    """A multiplier argument: a Multiplier, an Arithmetic, None (exact) or,
    for gradients, "forward"; for the forward pass also an integer one (an
    IntegerMultiplier or a Quantized, which chooses its own gradients)."""
    if value is None or isinstance(value, (Multiplier, Arithmetic)):
        return
    if isinstance(value, INTEGER_KINDS):
        if allow_forward:
            raise TypeError(
                f"{name} takes float multipliers; got {value!r} (an integer multiplier's "
                "gradients are chosen by approxjax.Quantized(..., gradient=...))"
            )
        return
    if allow_forward and isinstance(value, str) and value == FORWARD:
        return
    raise TypeError(
        f"{name} must be a Multiplier, an Arithmetic, None (exact)"
        + (" or 'forward'" if allow_forward else "")
        + f"; got {value!r}"
    )


def check_multiplier(name: str, value: Any, allow_forward: bool) -> None:
    """check_choice, and one table per call (a stack is mapped with vmap)."""
    check_choice(name, value, allow_forward)
    if isinstance(value, (Multiplier, Arithmetic, *INTEGER_KINDS)) and value.batch_shape:
        raise ValueError(
            f"{name} is a stack of multipliers {value.batch_shape}; map over it with "
            "jax.vmap (in_axes=0) so each call sees one table"
        )


def _dims(value: Any) -> tuple[int, ...]:
    """A sequence of dimension indices; each must be an integer (not 1.5 or True)."""
    out = []
    for d in value:
        if isinstance(d, bool):
            raise TypeError(f"dimension index {d!r} is a bool")
        out.append(operator.index(d))
    return tuple(out)


def check_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers):
    """``((lc, rc), (lb, rb))`` as int tuples, checked against the shapes."""
    try:
        (lc, rc), (lb, rb) = dimension_numbers
        lc, rc, lb, rb = (_dims(x) for x in (lc, rc, lb, rb))
    except (TypeError, ValueError) as e:
        raise ValueError(
            "dimension_numbers must be ((lhs_contracting, rhs_contracting), "
            f"(lhs_batch, rhs_batch)) of integer sequences; got {dimension_numbers!r} ({e})"
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
