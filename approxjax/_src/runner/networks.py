"""Reference models built from approxjax modules (every GEMM approximate).

Each takes the multiplier from :func:`approxjax.using` (the modules' default),
so the same model trains in float32 (no context) or under any multiplier.
Normalisation layers are parameter-only (GroupNorm/LayerNorm): no mutable
state, so a vmapped sweep is a plain function of the parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from approxjax._src.flax.modules import Conv, Dense, MultiHeadDotProductAttention


class MLP(nn.Module):
    """A multilayer perceptron on flattened inputs."""

    num_classes: int = 10
    hidden: Sequence[int] = (128, 64)

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(Dense(width)(x))
        return Dense(self.num_classes)(x)


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and a classifier: the quick default for 8x8 digits."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(Conv(16, (3, 3))(x))
        x = nn.relu(Conv(32, (3, 3), strides=2)(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(Dense(64)(x))
        return Dense(self.num_classes)(x)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998): conv 6@5x5, pool, conv 16@5x5, pool, 120, 84."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        pad = "SAME" if x.shape[1] < 32 else "VALID"
        x = nn.relu(Conv(6, (5, 5), padding=pad)(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(Conv(16, (5, 5), padding="VALID" if x.shape[1] >= 5 else "SAME")(x))
        x = nn.avg_pool(x, (2, 2), (2, 2)) if x.shape[1] >= 2 else x
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(Dense(120)(x))
        x = nn.relu(Dense(84)(x))
        return Dense(self.num_classes)(x)


class _Block(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.GroupNorm(num_groups=4)(Conv(self.features, (3, 3), self.strides)(x)))
        y = nn.GroupNorm(num_groups=4)(Conv(self.features, (3, 3))(y))
        if x.shape[-1] != self.features or self.strides != 1:
            x = Conv(self.features, (1, 1), self.strides)(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al., 2016): depth = 6 n + 2 (8, 14, 20, ...)."""

    num_classes: int = 10
    depth: int = 8
    width: int = 16

    @nn.compact
    def __call__(self, x):
        if (self.depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n + 2; got {self.depth}")
        n = (self.depth - 2) // 6
        x = nn.relu(Conv(self.width, (3, 3))(x))
        for stage, features in enumerate((self.width, 2 * self.width, 4 * self.width)):
            for i in range(n):
                x = _Block(features, 2 if stage and i == 0 else 1)(x)
        return Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


def _norm(features: int) -> nn.Module:
    """GroupNorm with up to 32 groups that divide ``features`` (parameter-only)."""
    groups = max(g for g in (32, 16, 8, 4, 2, 1) if features % g == 0)
    return nn.GroupNorm(num_groups=groups)


class _Bottleneck(nn.Module):
    features: int  # of the 3x3 convolution; the block outputs 4x
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        out = 4 * self.features
        y = nn.relu(_norm(self.features)(Conv(self.features, (1, 1))(x)))
        y = nn.relu(_norm(self.features)(Conv(self.features, (3, 3), self.strides)(y)))
        y = _norm(out)(Conv(out, (1, 1))(y))
        if x.shape[-1] != out or self.strides != 1:
            x = _norm(out)(Conv(out, (1, 1), self.strides)(x))
        return nn.relu(x + y)


class _Basic(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        y = nn.relu(_norm(self.features)(Conv(self.features, (3, 3), self.strides)(x)))
        y = _norm(self.features)(Conv(self.features, (3, 3))(y))
        if x.shape[-1] != self.features or self.strides != 1:
            x = _norm(self.features)(Conv(self.features, (1, 1), self.strides)(x))
        return nn.relu(x + y)


class ImageNetResNet(nn.Module):
    """ResNet-18/34 (basic blocks) and ResNet-50/101 (bottlenecks), He et al.
    2016, with GroupNorm instead of BatchNorm (no mutable statistics, so a
    vmapped sweep stays a function of the parameters). Images of 64 pixels or
    more get the ImageNet stem (7x7 stride-2 convolution, 3x3 stride-2 max
    pool), smaller ones a 3x3 stride-1 stem (CIFAR-style)."""

    num_classes: int = 1000
    stages: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    width: int = 64

    @nn.compact
    def __call__(self, x):
        if x.shape[1] >= 64:
            x = nn.relu(_norm(self.width)(Conv(self.width, (7, 7), 2)(x)))
            x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        else:
            x = nn.relu(_norm(self.width)(Conv(self.width, (3, 3))(x)))
        block = _Bottleneck if self.bottleneck else _Basic
        for stage, count in enumerate(self.stages):
            for i in range(count):
                x = block(self.width * 2**stage, 2 if stage and i == 0 else 1)(x)
        return Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class ViT(nn.Module):
    """A vision transformer (Dosovitskiy et al. 2021): patches of
    ``patch`` pixels embedded by an approximate convolution, a class token,
    learned positions, pre-norm blocks with approximate attention and MLP.
    ``vit_tiny`` is dim 192, depth 12, 3 heads (DeiT-Ti); the patch is 16
    pixels for images of 64 or more, else 4."""

    num_classes: int = 1000
    dim: int = 192
    depth: int = 12
    heads: int = 3
    patch: int | None = None

    @nn.compact
    def __call__(self, x):
        patch = self.patch or (16 if x.shape[1] >= 64 else 4)
        x = Conv(self.dim, (patch, patch), patch, padding="VALID")(x)
        x = x.reshape(x.shape[0], -1, self.dim)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), x], axis=1)
        x = x + self.param("pos", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
        for _ in range(self.depth):
            x = x + MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x))
            h = nn.gelu(Dense(4 * self.dim)(nn.LayerNorm()(x)))
            x = x + Dense(self.dim)(h)
        return Dense(self.num_classes)(nn.LayerNorm()(x[:, 0]))


class CharTransformer(nn.Module):
    """A small character-level transformer language model (causal attention)."""

    vocab: int
    dim: int = 64
    heads: int = 4
    layers: int = 2

    @nn.compact
    def __call__(self, tokens):
        t = tokens.shape[1]
        x = nn.Embed(self.vocab, self.dim)(tokens)
        x = x + self.param("pos", nn.initializers.normal(0.02), (t, self.dim))
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.layers):
            h = nn.LayerNorm()(x)
            x = x + MultiHeadDotProductAttention(self.heads)(h, mask=mask)
            h = nn.LayerNorm()(x)
            x = x + Dense(self.dim)(nn.gelu(Dense(4 * self.dim)(h)))
        return Dense(self.vocab)(nn.LayerNorm()(x))


IMAGENET_RESNETS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
}
MODELS = "mlp, cnn, lenet5, resnet8, resnet20, resnet18, resnet34, resnet50, resnet101, "
MODELS += "vit_tiny, transformer, scnn, translator, detector"


def build(name: str, num_classes: int, time_steps: int = 8, data=None) -> nn.Module:
    """A model by name (see ``MODELS``): resnet8/20 are CIFAR-style ResNets,
    resnet18/34/50/101 ImageNet-style; scnn a spiking CNN over
    ``time_steps``; translator an encoder-decoder transformer sized for
    ``data`` (sentence pairs: :mod:`approxjax._src.runner.translation`)."""
    if name == "detector":
        from approxjax._src.runner.detection import Detector

        return Detector(num_classes)
    if name == "translator":
        from approxjax._src.runner.translation import TranslationData, Translator

        if not isinstance(data, TranslationData):
            raise ValueError(
                f"the translator model needs sentence pairs (--dataset pairs); got "
                f"{getattr(data, 'name', data)!r}"
            )
        return Translator(
            len(data.source_vocab), len(data.target_vocab), data.source_len, data.target_len
        )
    if name == "scnn":
        from approxjax._src.flax.snn import SpikingCNN

        return SpikingCNN(num_classes, time_steps=time_steps)
    if name in IMAGENET_RESNETS:
        stages, bottleneck = IMAGENET_RESNETS[name]
        return ImageNetResNet(num_classes, stages, bottleneck)
    if name == "vit_tiny":
        return ViT(num_classes)
    if name == "mlp":
        return MLP(num_classes)
    if name == "cnn":
        return SmallCNN(num_classes)
    if name == "lenet5":
        return LeNet5(num_classes)
    if name.startswith("resnet") and name[6:].isdigit() and (int(name[6:]) - 2) % 6 == 0:
        return ResNet(num_classes, depth=int(name[6:]))
    if name == "transformer":
        return CharTransformer(vocab=num_classes)
    raise ValueError(f"unknown model {name!r}; known: {MODELS}")
