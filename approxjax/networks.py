"""The model zoo: neural networks built from approxjax modules (every GEMM
approximate under ``approxjax.using``); ``build(name, num_classes)`` by name
(``SpikingCNN``, ``scnn``, is in :mod:`approxjax.snn`)."""

from approxjax._src.runner.networks import (
    MLP,
    MODELS,
    CharTransformer,
    ImageNetResNet,
    LeNet5,
    ResNet,
    SmallCNN,
    ViT,
    build,
)

__all__ = [
    "MLP",
    "MODELS",
    "CharTransformer",
    "ImageNetResNet",
    "LeNet5",
    "ResNet",
    "SmallCNN",
    "ViT",
    "build",
]
