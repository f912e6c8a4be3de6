"""The model zoo: neural networks built from approxjax modules (every GEMM
approximate under ``approxjax.using``); ``build(name, num_classes)`` by name
(``SpikingCNN``, ``scnn``, is in :mod:`approxjax.snn`)."""

from approxjax._src.runner.networks import (
    MLP,
    CharTransformer,
    LeNet5,
    ResNet,
    SmallCNN,
    build,
)

__all__ = ["MLP", "CharTransformer", "LeNet5", "ResNet", "SmallCNN", "build"]
