"""approxjax: train and evaluate JAX/Flax networks under simulated approximate multipliers.

Every product of an approximate ``dot_general`` or convolution goes through a
multiplier described by a lookup table of significand products (see
:mod:`approxjax.reference` for the exact rule), computed by C++ (CPU) and CUDA
kernels registered as XLA FFI custom calls. An :class:`Arithmetic` adds
operand formats (FP8, BF16, FP16, custom; :mod:`approxjax.formats`), product
rounding, the accumulator's format and rounding, and approximate adders. An
:class:`IntegerMultiplier` (:mod:`approxjax.integer`: the catalog, and
:func:`from_c` with ``bits=``) multiplies integer operand codes.

The public API is what this module exports (``__all__``) and the namespaces
:mod:`approxjax.nn` (Flax modules), :mod:`approxjax.reference` (the pure-JAX
model), :mod:`approxjax.training` (training steps), :mod:`approxjax.networks`
(the model zoo), :mod:`approxjax.snn` (spiking networks),
:mod:`approxjax.translation` (sentence pairs, the encoder-decoder, decoding,
BLEU), :mod:`approxjax.detection` (COCO data, the detector, NMS, mAP) and
:mod:`approxjax.datasets`; everything under
``approxjax._src`` is private.
"""

from approxjax._src import extension_check as _extension_check

_extension_check.check()

from approxjax import formats, integer, nn, reference, snn  # noqa: E402
from approxjax._src.arithmetic.arithmetic import (  # noqa: E402
    LOA,
    Arithmetic,
    stack,  # noqa: E402
)
from approxjax._src.arithmetic.catalog import (  # noqa: E402
    alm_soa,
    drum,
    get,
    lowblock,
    mbm,
    mitchell,
    truncated,
)
from approxjax._src.arithmetic.integer import IntegerMultiplier  # noqa: E402
from approxjax._src.arithmetic.multipliers import Multiplier, significands  # noqa: E402
from approxjax._src.arithmetic.quantization import Quantized, QuantSpec  # noqa: E402
from approxjax._src.flax.modules import (  # noqa: E402
    Conv,
    ConvTranspose,
    Dense,
    DenseGeneral,
    Einsum,
    MultiHeadDotProductAttention,
)
from approxjax._src.interpret.interpreter import (  # noqa: E402
    OperationRecord,
    approximate,
    conv_transpose,
    einsum,
)
from approxjax._src.interpret.policy import (  # noqa: E402
    ContextTraceError,
    GemmMultipliers,
    Policy,
    current_policy,
    using,
)
from approxjax._src.kernels.ffi import cpu_kernel_variant, cuda_available  # noqa: E402
from approxjax._src.kernels.options import KernelOptions  # noqa: E402
from approxjax._src.ops.conv import conv_general_dilated  # noqa: E402
from approxjax._src.ops.dot_general import dot_general  # noqa: E402
from approxjax._src.ops.multiply import multiply  # noqa: E402
from approxjax._src.tools.c_build import CModelError  # noqa: E402
from approxjax._src.tools.c_models import adder_from_c, from_c, from_function  # noqa: E402
from approxjax._src.tools.characterize import (  # noqa: E402
    Characterization,
    characterize,
    format_table,
    plot_errors,
)
from approxjax._src.tools.decompose import (  # noqa: E402
    Decomposition,
    RankResidual,
    SurrogateResidual,
    decompose,
    surrogate,
)
from approxjax._src.tools.lut_files import (  # noqa: E402
    load_approxtrain,
    load_lut,
    save_approxtrain,
    save_lut,
)
from approxjax._src.version import __version__  # noqa: E402

__all__ = [
    "LOA",
    "Arithmetic",
    "CModelError",
    "Characterization",
    "Conv",
    "ContextTraceError",
    "ConvTranspose",
    "Dense",
    "DenseGeneral",
    "Einsum",
    "GemmMultipliers",
    "IntegerMultiplier",
    "KernelOptions",
    "MultiHeadDotProductAttention",
    "Multiplier",
    "OperationRecord",
    "Policy",
    "QuantSpec",
    "Quantized",
    "__version__",
    "adder_from_c",
    "alm_soa",
    "approximate",
    "characterize",
    "decompose",
    "Decomposition",
    "RankResidual",
    "conv_general_dilated",
    "conv_transpose",
    "cpu_kernel_variant",
    "cuda_available",
    "current_policy",
    "dot_general",
    "drum",
    "einsum",
    "format_table",
    "formats",
    "from_c",
    "from_function",
    "get",
    "integer",
    "load_approxtrain",
    "load_lut",
    "lowblock",
    "mbm",
    "mitchell",
    "multiply",
    "nn",
    "plot_errors",
    "reference",
    "save_approxtrain",
    "save_lut",
    "significands",
    "snn",
    "stack",
    "surrogate",
    "SurrogateResidual",
    "truncated",
    "using",
]
