"""Quantization of float operands to integer codes, for integer multipliers.

A float tensor ``x`` becomes codes ``q = clip(round(x / s) + z, qmin, qmax)``
of the multiplier's operand width and signedness, and back ``x' = s (q -
z)``. Scales ``s`` and zero points ``z`` come from the tensor itself, each
time it is quantized (dynamic quantization), per tensor or per output
channel, by one of three calibrations:

* ``"minmax"``: the range of the values;
* ``"percentile"``: the ``percentile``-th percentile of ``|x|`` (symmetric)
  or the ``100 - p`` and ``p`` percentiles (asymmetric), clipping outliers;
* ``"mse"``: the clipping range, among 32 fractions (0.35 to 1) of the
  min-max one, whose quantize-dequantize error is least.

Symmetric quantization has ``z = 0`` (signed codes: ``s = max|x| / qmax``;
unsigned codes represent ``x >= 0`` only, negatives clip to 0); asymmetric
quantization maps ``[min(x, 0), max(x, 0)]`` onto ``[qmin, qmax]`` with an
integer ``z``. NaN or inf, or all zeros, in a concrete tensor is a
``ValueError``; traced, all zeros gets ``s = 1`` (its codes are all ``z``,
the products exact zeros) and NaN or inf give NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from approxjax._src.arithmetic.integer import code_range, stack_integer

CALIBRATIONS = ("minmax", "percentile", "mse", "learned")
_MSE_FRACTIONS = np.linspace(0.35, 1.0, 32, dtype=np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """How one operand of a quantized GEMM is quantized (its width and
    signedness are the multiplier's).

    Attributes:
      symmetric: zero point 0 (else an integer zero point from the range).
      per_channel: one scale per output channel (the free dimensions of the
        operand: a weight's output features) instead of one per tensor.
      calibration: ``"minmax"``, ``"percentile"``, ``"mse"``, or
        ``"learned"``: a trainable scale (LSQ, see
        :meth:`Quantized.with_scales`; asymmetric: and a trainable zero
        point, LSQ+), a parameter of approxjax's Flax layers (``lhs_scale``,
        ``rhs_scale``, and ``lhs_zero``, ``rhs_zero``: created when the layer is
        initialized, or by an ``apply`` with ``mutable=["params"]``, from
        its first operands by ``initial``; or set from a whole calibration
        set by :func:`approxjax.nn.calibrate_scales`): in
        ``approxjax.nn``'s ``Dense``, ``Conv`` and ``DenseGeneral`` with one
        output axis; elsewhere (attention, ``approximate(fn)``, a bare
        ``dot_general``) the scale is calibrated min-max.
      percentile: for ``"percentile"`` (and ``initial="percentile"``), in
        (50, 100].
      initial: how a ``"learned"`` scale starts: ``"minmax"``,
        ``"percentile"`` or ``"mse"`` calibration of the operands it is set
        from.
    """

    symmetric: bool = True
    per_channel: bool = False
    calibration: Literal["minmax", "percentile", "mse", "learned"] = "minmax"
    percentile: float = 99.99
    initial: Literal["minmax", "percentile", "mse"] = "minmax"

    def __post_init__(self):
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}; got {self.calibration!r}")
        if self.initial not in CALIBRATIONS[:3]:
            raise ValueError(f"initial must be one of {CALIBRATIONS[:3]}; got {self.initial!r}")
        if self.initial != "minmax" and self.calibration != "learned":
            raise ValueError(
                f"initial={self.initial!r} sets where a learned scale starts; this spec's "
                f"calibration is {self.calibration!r} (use calibration={self.initial!r})"
            )
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100]; got {self.percentile!r}")
        for name in ("symmetric", "per_channel"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool; got {getattr(self, name)!r}")


def check_quantizable(name: str, x) -> None:
    """A concrete operand with NaN or inf, or all zeros (nothing to
    calibrate a scale on), cannot be quantized: ValueError. (A traced one
    cannot be checked: NaN and inf give NaN outputs, all zeros exact zeros.)"""
    if isinstance(x, jax.core.Tracer):
        return
    host = np.asarray(x)
    bad = ~np.isfinite(host)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name}{list(where)} = {host[where]!r}: NaN and inf cannot be quantized to codes"
        )
    if host.size and not host.any():
        raise ValueError(
            f"{name} is all zeros: there is no range to calibrate its quantization scale on"
        )


def _range(x, axes, spec: QuantSpec, signed: bool):
    """(lo, hi) of x over ``axes`` by the calibration (lo <= 0 <= hi); for
    symmetric signed codes, of ``|x|`` (``lo = -hi``)."""
    folded = spec.symmetric and signed
    y = jnp.abs(x) if folded else x
    if spec.calibration == "percentile" and spec.percentile < 100:
        p = spec.percentile
        hi = jnp.percentile(y, p, axis=axes, keepdims=True)
        lo = -hi if folded else jnp.percentile(y, 100 - p, axis=axes, keepdims=True)
    else:
        hi = jnp.max(y, axis=axes, keepdims=True)
        lo = -hi if folded else jnp.min(y, axis=axes, keepdims=True)
    return jnp.minimum(lo, 0), jnp.maximum(hi, 0)


def _params(lo, hi, bits, signed, symmetric):
    qmin, qmax = code_range(bits, signed)
    if symmetric:
        top = hi if not signed else jnp.maximum(-lo, hi)
        scale = top / qmax
        zero = jnp.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = jnp.where(scale > 0, scale, 1)
        zero = jnp.clip(jnp.round(qmin - lo / safe), qmin, qmax)
    scale = jnp.where(scale > 0, scale, 1.0)  # all zeros: any scale, codes z
    return scale.astype(jnp.float32), zero.astype(jnp.int32)


def quantize(x, scale, zero, bits: int, signed: bool):
    """Codes of x (int32): ``clip(round(x / scale) + zero, qmin, qmax)``."""
    qmin, qmax = code_range(bits, signed)
    q = jnp.round(x / scale) + zero
    return jnp.clip(q, qmin, qmax).astype(jnp.int32)


def dequantize(q, scale, zero):
    return (q - zero).astype(jnp.float32) * scale


def calibrate(x, axes, bits: int, signed: bool, spec: QuantSpec):
    """Scale and zero point of x over ``axes`` (keepdims), by ``spec`` (a
    ``"learned"`` scale not given: its initial value, by ``spec.initial``)."""
    if spec.calibration == "learned":
        spec = dataclasses.replace(spec, calibration=spec.initial, initial="minmax")
    x = jax.lax.stop_gradient(x.astype(jnp.float32))
    lo, hi = _range(x, axes, spec, signed)
    scale, zero = _params(lo, hi, bits, signed, spec.symmetric)
    if spec.calibration != "mse":
        return scale, zero
    best = None
    for frac in _MSE_FRACTIONS:
        s, z = _params(lo * frac, hi * frac, bits, signed, spec.symmetric)
        err = jnp.sum(
            jnp.square(dequantize(quantize(x, s, z, bits, signed), s, z) - x),
            axis=axes,
            keepdims=True,
        )
        if best is None:
            best = (err, s, z)
        else:
            better = err < best[0]
            best = (
                jnp.where(better, err, best[0]),
                jnp.where(better, s, best[1]),
                jnp.where(better, z, best[2]),
            )
    return best[1], best[2]


GRADIENTS = ("ste", "float", "quantized", "lut")


def default_smoothing(bits: tuple[int, int]) -> int:
    """The lut gradient's default half-width in codes: 2**(bits - 6) for the
    wider operand, at least 1 (4 at 8 bits: measured best of 1, 4 and 16 for
    three of four 8-bit designs on LeNet-5, docs/results.md)."""
    return min(64, max(1, 2 ** (max(bits) - 6)))


@jax.tree_util.register_pytree_node_class
class Quantized:
    """A quantized GEMM under an integer multiplier, for float operands:
    ``multiplier=`` of ``dot_general``, the Flax modules, ``approximate`` and
    a ``Policy``, like a float multiplier.

    The forward pass quantizes both operands to codes of the multiplier's
    widths (``lhs`` and ``rhs`` say how; the lhs is the activation, the rhs
    the weight), sums ``table[qa, qb]`` exactly in int32 and dequantizes. With
    zero points (asymmetric quantization) the multiplier sees the raw codes,
    as integer hardware does, and the zero-point terms are exact:
    ``sum (qa - za)(qb - zb) = sum table[qa, qb] - zb sum qa - za sum qb +
    K za zb`` (the first sum approximate, the rest exact), times ``sa * sb``.

    Gradients (``gradient``), all passing straight through the rounding and
    zero outside the clipping range:

    * ``"ste"``: the backward GEMMs in exact float32 on the dequantized
      operands (the peers' straight-through estimator);
    * ``"float"``: the same GEMMs through the float ``grad_multiplier``;
    * ``"quantized"``: the gradient quantized (symmetric, per tensor) and
      both backward GEMMs through the integer multiplier (needs signed
      operands);
    * ``"lut"``: the derivative of the approximate product itself,
      estimated from the table: central differences of width
      ``2 * smoothing`` codes along each operand, in value order
      (``smoothing`` by default :func:`default_smoothing`: 4 at 8 bits;
      coarse designs such as DRUM with k = 2 want 16), then the best
      rank-``lut_rank`` approximation of each derivative table, so the
      backward pass is ``lut_rank`` float32 GEMMs per operand (for the
      exact multiplier it equals ``"ste"``).

    Raises:
      TypeError: ``multiplier`` is not an IntegerMultiplier, or
        ``grad_multiplier`` not a float Multiplier/Arithmetic.
      ValueError: an unknown gradient, ``"float"`` without a
        ``grad_multiplier``, ``"quantized"`` on unsigned operands, per-channel
        lhs scales, ``lut_rank``/``smoothing`` out of range; under a function
        model (operands over 12 bits, summed exactly in int64 and rounded
        once to float32), ``"lut"`` or asymmetric quantization.
    """

    def __init__(
        self,
        multiplier,
        *,
        lhs: QuantSpec = QuantSpec(),  # noqa: B008 - frozen, hashable
        rhs: QuantSpec = QuantSpec(per_channel=True),  # noqa: B008
        gradient: str = "ste",
        grad_multiplier=None,
        lut_rank: int = 4,
        smoothing: int | None = None,
    ):
        from approxjax._src.arithmetic.arithmetic import Arithmetic
        from approxjax._src.arithmetic.integer import IntegerMultiplier
        from approxjax._src.arithmetic.multipliers import Multiplier

        if not isinstance(multiplier, IntegerMultiplier):
            raise TypeError(
                f"Quantized takes an IntegerMultiplier; got {type(multiplier).__name__} "
                "(a float Multiplier multiplies float operands directly)"
            )
        if not isinstance(lhs, QuantSpec) or not isinstance(rhs, QuantSpec):
            raise TypeError("lhs and rhs must be approxjax.QuantSpec")
        if lhs.per_channel:
            raise ValueError("per-channel scales are for the rhs (weights); the lhs is per tensor")
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}; got {gradient!r}")
        if gradient == "float" and not isinstance(grad_multiplier, (Multiplier, Arithmetic)):
            raise TypeError(
                "gradient='float' needs grad_multiplier, a float Multiplier or Arithmetic; "
                f"got {grad_multiplier!r}"
            )
        if gradient != "float" and grad_multiplier is not None:
            raise ValueError("grad_multiplier is used by gradient='float' only")
        if gradient == "quantized" and not all(multiplier.signed):
            raise ValueError(
                f"gradient='quantized' quantizes signed gradients: {multiplier.name} has "
                f"unsigned operands (signed={multiplier.signed})"
            )
        if multiplier.function is not None:
            if gradient == "lut":
                raise ValueError(
                    f"gradient='lut' differentiates a table: {multiplier.name} is a function "
                    "model without one (use 'ste', 'float' or 'quantized')"
                )
            if not (lhs.symmetric and rhs.symmetric):
                raise ValueError(
                    f"{multiplier.name} is a function model: its sums are rounded to float32, "
                    "so zero-point terms could not be exact; quantize symmetrically"
                )
        if smoothing is None:
            smoothing = default_smoothing(multiplier.bits)
        for label, value in (("lut_rank", lut_rank), ("smoothing", smoothing)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
                raise ValueError(f"{label} must be an int in [1, 64]; got {value!r}")
        self.multiplier = multiplier
        self.grad_multiplier = grad_multiplier
        self.lhs, self.rhs = lhs, rhs
        self.gradient = gradient
        self.lut_rank, self.smoothing = lut_rank, smoothing
        self.lhs_scale = self.rhs_scale = None
        self.lhs_zero = self.rhs_zero = None

    def with_scales(
        self, lhs: Any = None, rhs: Any = None, *, lhs_zero: Any = None, rhs_zero: Any = None
    ) -> Quantized:
        """The same GEMM with given scales (and, on asymmetric sides, zero
        points) instead of calibrated ones: from a calibration set (fixed),
        or trainable parameters (learned step sizes, LSQ: Esser et al., ICLR
        2020; with learned zero points, LSQ+: Bhalgat et al., CVPR Workshops
        2020). ``lhs`` is a scalar; ``rhs`` a scalar, or with per-channel rhs
        quantization one scale per output channel (a Dense layer's features;
        a convolution's output channels); a zero point has its scale's
        shape. ``None`` keeps that side calibrated. A symmetric side takes a
        scale only (zero point 0); an asymmetric side takes both. Scales are
        used by magnitude (at least 1e-12); a zero point ``z`` (a float, so
        that it can train) as the integer code ``clip(round(z))``.

        Gradients, for ``q = clip(round(x / s) + round(z))`` and the
        dequantized ``s (q - round(z))``, each times the incoming gradient
        of the dequantized operand (by the ``gradient`` estimator), summed
        over the values that share the parameter, times LSQ's gradient
        scale ``1 / sqrt(n * q_max)`` (``n`` values per parameter): for the
        scale, ``round(x / s) - x / s`` inside the range and ``q - round(z)``
        at a clipped value; for the zero point (through the rounding), 0
        inside the range and ``-s`` at a clipped value.

        Raises:
          ValueError: a zero point for a symmetric side, a scale without a
            zero point (or the reverse) for an asymmetric one; a scale or
            zero point of the wrong rank (a per-channel count is checked
            when the GEMM runs).
        """
        children, aux = self.tree_flatten()
        out = Quantized.tree_unflatten(aux, children)
        for side, value, zero, spec in (
            ("lhs", lhs, lhs_zero, self.lhs),
            ("rhs", rhs, rhs_zero, self.rhs),
        ):
            if value is None and zero is None:
                continue
            if spec.symmetric and zero is not None:
                raise ValueError(
                    f"{side} is quantized symmetrically: its zero point is 0 "
                    "(zero points are for asymmetric sides: QuantSpec(symmetric=False))"
                )
            if not spec.symmetric and (value is None or zero is None):
                raise ValueError(
                    f"{side} is quantized asymmetrically: give its scale and its zero point "
                    f"together ({side}=..., {side}_zero=...)"
                )
            for label, x in (("scale", value), ("zero point", zero)):
                if x is None:
                    continue
                x = jnp.asarray(x, jnp.float32)
                if x.ndim > (1 if side == "rhs" and spec.per_channel else 0):
                    raise ValueError(
                        f"{side} {label} must be a scalar"
                        + (" or one per output channel" if side == "rhs" and spec.per_channel
                           else "")
                        + f"; got shape {x.shape}"
                    )  # fmt: skip
                setattr(out, f"{side}_{'scale' if label == 'scale' else 'zero'}", x)
        return out

    @property
    def name(self) -> str:
        """``mitchell8s/ste``: the multiplier's name, then :attr:`settings`."""
        return "/".join([self.multiplier.name, *self.settings])

    @property
    def settings(self) -> list[str]:
        """The gradient, then each setting that differs from the defaults:
        ``asym``, ``per_tensor``, the calibration (``mse``, ``p99.9``,
        ``learned``, ``learned-from-mse``; per side as ``lhs-mse`` where they
        differ), ``rank2``, ``smooth2``."""
        parts = [self.gradient]
        if not (self.lhs.symmetric and self.rhs.symmetric):
            parts.append("asym")
        if not self.rhs.per_channel:
            parts.append("per_tensor")

        def calibration(q: QuantSpec) -> str:
            if q.calibration == "percentile":
                return f"p{q.percentile:g}"
            if q.calibration == "learned" and q.initial != "minmax":  # learned-from-mse
                start = f"p{q.percentile:g}" if q.initial == "percentile" else q.initial
                return f"learned-from-{start}"
            return q.calibration

        calib = [calibration(q) for q in (self.lhs, self.rhs)]
        if calib[0] == calib[1] != "minmax":
            parts.append(calib[0])
        elif calib[0] != calib[1]:
            parts += [f"{side}-{c}" for side, c in zip(("lhs", "rhs"), calib, strict=True)]
        if self.gradient == "lut" and self.lut_rank != 4:
            parts.append(f"rank{self.lut_rank}")
        if self.gradient == "lut" and self.smoothing != default_smoothing(self.multiplier.bits):
            parts.append(f"smooth{self.smoothing}")
        return parts

    @property
    def learns_scales(self) -> bool:
        """Whether either side's calibration is ``"learned"``."""
        return "learned" in (self.lhs.calibration, self.rhs.calibration)

    def __bool__(self) -> bool:  # truthy although a single one has no len()
        return True

    def __len__(self) -> int:
        return len(self.multiplier)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.multiplier.batch_shape

    def __repr__(self) -> str:
        return f"Quantized({self.multiplier!r}, gradient={self.gradient!r})"

    def tree_flatten(self):
        aux = (self.lhs, self.rhs, self.gradient, self.lut_rank, self.smoothing)
        children = (self.multiplier, self.grad_multiplier, self.lhs_scale, self.rhs_scale,
                    self.lhs_zero, self.rhs_zero)  # fmt: skip
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        (obj.multiplier, obj.grad_multiplier, obj.lhs_scale, obj.rhs_scale, obj.lhs_zero,
         obj.rhs_zero) = children  # fmt: skip
        obj.lhs, obj.rhs, obj.gradient, obj.lut_rank, obj.smoothing = aux
        return obj


def stack_quantized(items: Sequence[Quantized]) -> Quantized:
    """A stack of quantized GEMMs that differ only in their integer
    multipliers (one kernel call under ``jax.vmap``).

    Raises:
      ValueError: the members differ in quantization or gradient settings.
    """
    first = items[0]
    for q in items:
        if not isinstance(q, Quantized):
            raise TypeError(f"stack takes Quantized GEMMs only here; got {type(q).__name__}")
        if q.tree_flatten()[1] != first.tree_flatten()[1] or q.grad_multiplier is not None:
            raise ValueError(
                f"stacked Quantized GEMMs must share quantization and gradient settings (and "
                f"have no grad_multiplier): {first.name} and {q.name} differ"
            )
        if q.lhs_scale is not None or q.rhs_scale is not None:
            raise ValueError(f"{q.name} has given scales: stack the multipliers, then give them")
    children = (stack_integer([q.multiplier for q in items]), None, None, None, None, None)
    return Quantized.tree_unflatten(first.tree_flatten()[1], children)
