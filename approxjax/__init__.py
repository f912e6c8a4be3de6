"""approxjax: train and evaluate JAX/Flax networks under simulated approximate multipliers.

Every product of an approximate ``dot_general`` goes through a multiplier
described by a lookup table of significand products (see
:mod:`approxjax.reference` for the exact rule), computed by C++ (CPU) and CUDA
kernels registered as XLA FFI custom calls.
"""

from approxjax import multipliers, reference
from approxjax._ffi import cpu_kernel_variant, cuda_available
from approxjax.characterize import Characterization, characterize, format_table, plot_errors
from approxjax.conv import conv_general_dilated
from approxjax.interpreter import OperationRecord, approximate, conv_transpose, einsum
from approxjax.lut_files import load_approxtrain, load_lut, save_approxtrain, save_lut
from approxjax.models import from_c, from_function
from approxjax.multipliers import (
    Multiplier,
    alm_soa,
    drum,
    get,
    mbm,
    mitchell,
    stack,
    truncated,
)
from approxjax.nn import (
    Conv,
    ConvTranspose,
    Dense,
    DenseGeneral,
    Einsum,
    MultiHeadDotProductAttention,
)
from approxjax.ops import dot_general, multiply
from approxjax.policy import GemmMultipliers, Policy, current_policy, using

__version__ = "0.1.0"

__all__ = [
    "Characterization",
    "Conv",
    "ConvTranspose",
    "Dense",
    "DenseGeneral",
    "Einsum",
    "GemmMultipliers",
    "MultiHeadDotProductAttention",
    "Multiplier",
    "OperationRecord",
    "Policy",
    "approximate",
    "conv_general_dilated",
    "conv_transpose",
    "current_policy",
    "einsum",
    "using",
    "__version__",
    "alm_soa",
    "characterize",
    "cpu_kernel_variant",
    "cuda_available",
    "dot_general",
    "drum",
    "format_table",
    "from_c",
    "from_function",
    "get",
    "load_approxtrain",
    "load_lut",
    "mbm",
    "mitchell",
    "multipliers",
    "multiply",
    "plot_errors",
    "reference",
    "save_approxtrain",
    "save_lut",
    "stack",
    "truncated",
]
