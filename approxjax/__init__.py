"""approxjax: train and evaluate JAX/Flax networks under simulated approximate multipliers.

Every product of an approximate ``dot_general`` goes through a multiplier
described by a lookup table of significand products (see
:mod:`approxjax.reference` for the exact rule), computed by C++ (CPU) and CUDA
kernels registered as XLA FFI custom calls.
"""

from approxjax import multipliers, reference
from approxjax._ffi import cpu_kernel_variant, cuda_available
from approxjax.multipliers import Multiplier, stack, truncated
from approxjax.ops import dot_general, multiply

__version__ = "0.1.0"

__all__ = [
    "Multiplier",
    "__version__",
    "cpu_kernel_variant",
    "cuda_available",
    "dot_general",
    "multipliers",
    "multiply",
    "reference",
    "stack",
    "truncated",
]
