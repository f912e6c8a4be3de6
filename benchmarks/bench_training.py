"""A full training step (forward, backward, optax update) under mitchell(7) and int8 vs float32.

Usage: python benchmarks/bench_training.py [--record] [--repeats N]

Models from approxjax.networks at batch 128: LeNet-5 on 28x28x1, ResNet-8 on
32x32x3. The float32 step is the same model with no multiplier (XLA's own
dot and convolution), measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import approxjax as ax
from approxjax import networks
from approxjax.training import make_train_step

sys.path.insert(0, str(Path(__file__).parent))
from bench_gemm import record, time_pair  # noqa: E402


def _stepper(model, x, y, multiplier):
    """A zero-argument call running one training step (approxjax.training's
    shared step) on its own state."""
    params = model.init(jax.random.key(0), x[:2])
    opt = optax.adam(1e-3)
    state = [params, opt.init(params)]
    step = jax.jit(make_train_step(model.apply, opt))

    def run():
        state[0], state[1], loss, _ = step(*state, x, y, multiplier)
        return loss

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--imagenet", action="store_true",
        help="time ResNet-50 on 224x224x3 at batch 8 instead (images/s; minutes on a CPU)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.imagenet:
        return _imagenet(args)
    rng = np.random.default_rng(0)
    cases = [
        ("LeNet-5, 28x28x1, batch 128", networks.LeNet5(10), (128, 28, 28, 1)),
        ("ResNet-8, 32x32x3, batch 128", networks.ResNet(10, depth=8), (128, 32, 32, 3)),
    ]
    arithmetics = [ax.mitchell(7), ax.Quantized(ax.integer.mitchell(8))]
    rows = []
    print(f"{'model':<32} {'arithmetic':<16} {'approx ms':>10} {'float32 ms':>11} {'ratio':>7}",
          flush=True)  # fmt: skip
    for label, model, shape in cases:
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, shape[0]), jnp.int32)
        for arith in arithmetics:
            approx, native = time_pair(
                _stepper(model, x, y, arith), _stepper(model, x, y, None), args.repeats
            )
            rows.append((label, arith.name, approx, native))
            print(f"{label:<32} {arith.name:<16} {approx:>10.1f} {native:>11.1f} "
                  f"{approx / native:>7.2f}", flush=True)  # fmt: skip
    if args.record:
        record(
            "bench_training.py",
            "Training step (forward, backward, Adam) under mitchell(7) (float LUT) and under "
            "int8 quantization with mitchell8s and straight-through gradients (integer LUT), vs "
            "the same model in float32. Targets: the int8 LeNet-5 step within 3x of float32.",
            ["model", "arithmetic", "approx ms", "float32 ms", "ratio"],
            [[label, name, f"{a:.1f}", f"{n:.1f}", f"{a / n:.2f}"] for label, name, a, n in rows],
        )
    return 0


def _imagenet(args) -> int:
    """The ResNet-50 training step at 224x224x3, batch 8: images/s under
    mitchell(7) and in float32 (``approxjax.networks.ImageNetResNet``)."""
    rng = np.random.default_rng(0)
    model = networks.build("resnet50", 1000)
    x = jnp.asarray(rng.standard_normal((8, 224, 224, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 1000, 8), jnp.int32)
    approx, native = time_pair(
        _stepper(model, x, y, ax.mitchell(7)), _stepper(model, x, y, None), args.repeats
    )
    rows = [["ResNet-50, 224x224x3, batch 8", "mitchell7", f"{approx:.0f}", f"{native:.0f}",
             f"{8e3 / approx:.2f}", f"{8e3 / native:.2f}", f"{approx / native:.2f}"]]  # fmt: skip
    print(" | ".join(rows[0]), flush=True)
    if args.record:
        record(
            "bench_training.py --imagenet",
            "ResNet-50 (GroupNorm) training step (forward, backward, Adam) on 224x224x3 images at "
            "batch 8, under mitchell(7) vs float32: images per second.",
            ["model", "arithmetic", "approx ms", "float32 ms", "approx img/s", "float32 img/s",
             "ratio"],
            rows,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
