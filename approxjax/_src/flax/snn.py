"""Spiking neural networks under simulated arithmetic (``approxjax.snn``).

Neurons are Flax modules stepping a membrane potential once per time step:
``v, spikes = LIF(beta=0.9)(v, current)`` computes

    v = beta * v + current           (the leak product through the multiplier)
    spikes = H(v - threshold)         (Heaviside; a surrogate derivative backward)
    v = v - spikes * threshold        (reset="subtract"), or v * (1 - spikes) ("zero")

``IF`` is the integrate-and-fire neuron (``beta = 1``: no leak product). The
synaptic currents come from approxjax's own ``Dense``/``Conv`` (``SpikingDense``
and ``SpikingConv`` bundle one with a neuron), so every synaptic product of
the forward and backward passes, and the membrane leak products, go through
the multiplier of :func:`approxjax.using` (or the module's ``multiplier``);
the membrane sums ``leak + current`` are rounded once to an
:class:`~approxjax.Arithmetic`'s accumulator format with its rounding (as an
adder of that format would; float32 otherwise; a stochastic accumulator is
refused and an approximate adder is not applied to them: the synaptic
GEMMs' own sums follow the accumulator and the adder). Under an integer
multiplier (a quantized GEMM) the synapses are quantized and the leak
product stays exact (an elementwise product has no quantized form here).

Surrogate gradients: ``"fast_sigmoid"`` (SuperSpike, Zenke and Ganguli 2018:
``1 / (1 + slope |x|)^2``) and ``"arctan"`` (Fang et al. 2021:
``(slope / 2) / (1 + (pi slope x / 2)^2)``), each with its slope.

Time is the leading axis of every input sequence; models unroll over it with
``flax.linen.scan`` (``lax.scan``), as :class:`SpikingCNN` does. Encoders turn
images in [0, 1] into spike trains: :func:`rate_encode` (Bernoulli, an
explicit key) and :func:`latency_encode` (one spike, earlier for brighter).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from approxjax._src.arithmetic.arithmetic import Arithmetic
from approxjax._src.arithmetic.formats import convert
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.flax.modules import CONTEXT, Conv, Dense, resolve
from approxjax._src.ops.multiply import multiply

SURROGATES = ("fast_sigmoid", "arctan")
RESETS = ("subtract", "zero")


def surrogate_derivative(x: jax.Array, surrogate: str, slope: float) -> jax.Array:
    """The surrogate derivative of the Heaviside step at ``x``."""
    if surrogate == "fast_sigmoid":
        return 1.0 / jnp.square(1.0 + slope * jnp.abs(x))
    if surrogate == "arctan":
        return (slope / 2.0) / (1.0 + jnp.square(np.pi / 2.0 * slope * x))
    raise ValueError(f"surrogate must be one of {SURROGATES}; got {surrogate!r}")


@partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def spike(x: jax.Array, surrogate: str = "fast_sigmoid", slope: float = 25.0) -> jax.Array:
    """1.0 where ``x >= 0``, else 0.0; differentiated by the surrogate.

    Raises:
      ValueError: an unknown surrogate, or a slope that is not > 0.
    """
    _check_surrogate(surrogate, slope)
    return (x >= 0).astype(jnp.result_type(x, jnp.float32))


@spike.defjvp
def _spike_jvp(surrogate, slope, primals, tangents):
    (x,), (dx,) = primals, tangents
    return spike(x, surrogate, slope), surrogate_derivative(x, surrogate, slope) * dx


def _check_surrogate(surrogate: str, slope: float) -> None:
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}; got {surrogate!r}")
    if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not slope > 0:
        raise ValueError(f"slope must be a number > 0; got {slope!r}")


def rate_encode(key: jax.Array, x: jax.Array, time_steps: int) -> jax.Array:
    """Bernoulli spike trains ``(time_steps, *x.shape)``: each step spikes
    with probability ``x`` (clipped to [0, 1]).

    Raises:
      ValueError: ``time_steps`` is not an int >= 1.
    """
    _check_steps(time_steps)
    p = jnp.clip(jnp.asarray(x, jnp.float32), 0.0, 1.0)
    return (jax.random.uniform(key, (time_steps, *p.shape)) < p).astype(jnp.float32)


def latency_encode(x: jax.Array, time_steps: int, threshold: float = 0.01) -> jax.Array:
    """One spike per input above ``threshold``, at step
    ``round((1 - x) * (time_steps - 1))`` (``x`` clipped to [0, 1]: the
    brightest spike first); ``(time_steps, *x.shape)``.

    Raises:
      ValueError: ``time_steps`` is not an int >= 1.
    """
    _check_steps(time_steps)
    p = jnp.clip(jnp.asarray(x, jnp.float32), 0.0, 1.0)
    when = jnp.round((1.0 - p) * (time_steps - 1))
    steps = jnp.arange(time_steps, dtype=jnp.float32).reshape((-1,) + (1,) * p.ndim)
    return ((steps == when) & (p > threshold)).astype(jnp.float32)


def _check_steps(time_steps: Any) -> None:
    if isinstance(time_steps, bool) or not isinstance(time_steps, int) or time_steps < 1:
        raise ValueError(f"time_steps must be an int >= 1; got {time_steps!r}")


def rounded_sum(a: jax.Array, b: jax.Array, fmt, rounding: str = "nearest_even") -> jax.Array:
    """The exact sums ``a + b`` of float32 values rounded once to ``fmt``
    (a format of at most 21 mantissa bits): the float32 sum rounded to odd
    (TwoSum gives the exact error), then to the format, which equals one
    rounding of the exact sum (Boldo and Melquiond 2008)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    bits = jax.lax.bitcast_convert_type(s, jnp.uint32)
    fix = jnp.isfinite(s) & (err != 0) & ((bits & 1) == 0)
    toward = (err > 0) == (s > 0)  # the exact sum lies beyond s (away from zero)
    one = jnp.uint32(1)
    bits = jnp.where(fix & toward, bits + one, jnp.where(fix & ~toward, bits - one, bits))
    return convert(jax.lax.bitcast_convert_type(bits, jnp.float32), fmt, rounding)


class LIF(nn.Module):
    """A leaky integrate-and-fire neuron: one time step of ``(v, current) ->
    (v, spikes)`` (see the module docstring). ``beta`` is the leak factor
    in (0, 1]; ``multiplier``: ``"context"`` (default), a float Multiplier
    or Arithmetic, or None, for the leak product."""

    beta: float = 0.9
    threshold: float = 1.0
    reset: Literal["subtract", "zero"] = "subtract"
    surrogate: str = "fast_sigmoid"
    slope: float = 25.0
    multiplier: Any = CONTEXT

    @nn.compact
    def __call__(self, v: jax.Array, current: jax.Array) -> tuple[jax.Array, jax.Array]:
        if not 0.0 < float(self.beta) <= 1.0:
            raise ValueError(f"beta must be in (0, 1]; got {self.beta!r}")
        if not float(self.threshold) > 0:
            raise ValueError(f"threshold must be > 0; got {self.threshold!r}")
        if self.reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}; got {self.reset!r}")
        _check_surrogate(self.surrogate, self.slope)
        if v.shape != current.shape:
            raise ValueError(f"v {v.shape} and current {current.shape} must have one shape")
        v = self._integrate(self._leak(v), current)
        s = spike(v - self.threshold, self.surrogate, self.slope)
        v = v - s * self.threshold if self.reset == "subtract" else v * (1.0 - s)
        return v, s

    def _integrate(self, leak: jax.Array, current: jax.Array) -> jax.Array:
        """``leak + current``, rounded once to the accumulator format of an
        Arithmetic (as its adder would; float32 otherwise)."""
        mult = resolve(self.multiplier).forward
        spec = mult.spec if isinstance(mult, Arithmetic) else None
        if spec is None or spec.accumulator is None or spec.accumulator.is_float32:
            return leak + current
        if spec.accumulator_rounding == "stochastic":
            raise NotImplementedError(
                "membrane sums under a stochastic accumulator are not simulated (the synaptic "
                "GEMMs' sums are); use a deterministic accumulator_rounding"
            )
        return rounded_sum(leak, current, spec.accumulator, spec.accumulator_rounding)

    def _leak(self, v: jax.Array) -> jax.Array:
        if self.beta == 1.0:
            return v
        beta = jnp.asarray(self.beta, jnp.float32)
        mult = resolve(self.multiplier).forward
        if isinstance(mult, (Multiplier, Arithmetic)):
            return multiply(beta, v, mult)
        return beta * v  # exact, or an integer multiplier (see the module docstring)


class IF(LIF):
    """An integrate-and-fire neuron: :class:`LIF` without leak (``beta = 1``)."""

    beta: float = 1.0


class _SpikingLayer(nn.Module):
    """Synaptic currents (``_synapse``) into a :class:`LIF` neuron:
    ``(v, x) -> (v, spikes)``."""

    features: int
    beta: float = 0.9
    threshold: float = 1.0
    reset: Literal["subtract", "zero"] = "subtract"
    surrogate: str = "fast_sigmoid"
    slope: float = 25.0

    def _synapse(self) -> nn.Module:
        raise NotImplementedError

    @nn.compact
    def __call__(self, v, x):
        current = self._synapse()(x)
        return LIF(self.beta, self.threshold, self.reset, self.surrogate, self.slope)(v, current)


class SpikingDense(_SpikingLayer):
    """``approxjax.Dense`` into a :class:`LIF` neuron: ``(v, x) -> (v, spikes)``."""

    def _synapse(self) -> nn.Module:
        return Dense(self.features)


class SpikingConv(_SpikingLayer):
    """``approxjax.Conv`` (SAME padding) into a :class:`LIF` neuron."""

    kernel_size: tuple[int, ...] = (3, 3)

    def _synapse(self) -> nn.Module:
        return Conv(self.features, self.kernel_size)


class _SpikingCNNStep(nn.Module):
    """One time step of :class:`SpikingCNN` (scanned over time)."""

    num_classes: int
    beta: float
    surrogate: str
    slope: float

    @nn.compact
    def __call__(self, carry, x_t):
        v1, v2, v3 = carry
        neuron = dict(beta=self.beta, surrogate=self.surrogate, slope=self.slope)
        v1, s = SpikingConv(16, **neuron)(v1, x_t)
        s = nn.avg_pool(s, (2, 2), (2, 2))
        v2, s = SpikingConv(32, **neuron)(v2, s)
        s = nn.avg_pool(s, (2, 2), (2, 2))
        v3, s = SpikingDense(64, **neuron)(v3, s.reshape(s.shape[0], -1))
        return (v1, v2, v3), Dense(self.num_classes)(s)


class SpikingCNN(nn.Module):
    """A spiking CNN (the zoo's ``scnn``): two spiking 3x3 convolutions (16
    and 32 LIF channels, each followed by 2x2 average pooling), 64 spiking
    units and a non-spiking readout whose currents, averaged over
    ``time_steps``, are the logits. ``encoding``: ``"direct"`` (the image is
    the input current at every step) or ``"latency"`` (:func:`latency_encode`
    of the image clipped to [0, 1])."""

    num_classes: int = 10
    time_steps: int = 8
    encoding: Literal["direct", "latency"] = "direct"
    beta: float = 0.9
    surrogate: str = "fast_sigmoid"
    slope: float = 25.0

    @nn.compact
    def __call__(self, x):
        _check_steps(self.time_steps)
        if x.ndim != 4:
            raise ValueError(
                f"SpikingCNN takes images (batch, height, width, channels); got {x.shape}"
            )
        t = self.time_steps
        if self.encoding == "direct":
            inputs = jnp.broadcast_to(x, (t, *x.shape))
        elif self.encoding == "latency":
            inputs = latency_encode(x, t)
        else:
            raise ValueError(f"encoding must be 'direct' or 'latency'; got {self.encoding!r}")
        b, h, w, _ = x.shape
        carry = (
            jnp.zeros((b, h, w, 16), jnp.float32),
            jnp.zeros((b, h // 2, w // 2, 32), jnp.float32),
            jnp.zeros((b, 64), jnp.float32),
        )
        steps = nn.scan(
            _SpikingCNNStep,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
            length=t,
        )
        _, outputs = steps(self.num_classes, self.beta, self.surrogate, self.slope)(carry, inputs)
        return jnp.mean(outputs, axis=0)
