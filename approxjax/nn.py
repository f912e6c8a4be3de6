"""Drop-in ``flax.linen`` modules whose products go through a simulated multiplier.

``approxjax.nn.Dense`` is ``approxjax.Dense`` (and so on); see the
implementation's docstring for the multiplier fields and how they are read.
"""

from approxjax._src.flax.modules import (
    Conv,
    ConvTranspose,
    Dense,
    DenseGeneral,
    Einsum,
    MultiHeadDotProductAttention,
    calibrate_scales,
)

__all__ = [
    "Conv",
    "ConvTranspose",
    "Dense",
    "DenseGeneral",
    "Einsum",
    "MultiHeadDotProductAttention",
    "calibrate_scales",
]
