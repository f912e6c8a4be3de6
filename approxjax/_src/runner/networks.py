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


def build(name: str, num_classes: int, time_steps: int = 8) -> nn.Module:
    """A model by name: mlp, cnn, lenet5, resnet8, resnet20, transformer, scnn
    (a spiking CNN over ``time_steps``)."""
    if name == "scnn":
        from approxjax._src.flax.snn import SpikingCNN

        return SpikingCNN(num_classes, time_steps=time_steps)
    if name == "mlp":
        return MLP(num_classes)
    if name == "cnn":
        return SmallCNN(num_classes)
    if name == "lenet5":
        return LeNet5(num_classes)
    if name.startswith("resnet") and name[6:].isdigit():
        return ResNet(num_classes, depth=int(name[6:]))
    if name == "transformer":
        return CharTransformer(vocab=num_classes)
    raise ValueError(
        f"unknown model {name!r}; known: mlp, cnn, lenet5, resnet8, resnet20, transformer, scnn"
    )
