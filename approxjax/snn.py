"""Spiking neural networks whose synaptic and leak products go through the
simulated arithmetic: LIF/IF neurons with surrogate gradients, spike encoders,
spiking Dense/Conv layers and the zoo's spiking CNN (see the implementation's
docstring)."""

from approxjax._src.flax.snn import (
    IF,
    LIF,
    RESETS,
    SURROGATES,
    SpikingCNN,
    SpikingConv,
    SpikingDense,
    latency_encode,
    rate_encode,
    spike,
    surrogate_derivative,
)

__all__ = [
    "IF",
    "LIF",
    "RESETS",
    "SURROGATES",
    "SpikingCNN",
    "SpikingConv",
    "SpikingDense",
    "latency_encode",
    "rate_encode",
    "spike",
    "surrogate_derivative",
]
