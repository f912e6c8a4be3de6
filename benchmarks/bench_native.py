"""The native path (method="native"): low-rank multipliers as r XLA dots, against jnp.dot
and against the LUT kernel for the same multiplier.

Usage: python benchmarks/bench_native.py [--record] [--repeats N] [--size N]

1. A 1024^3 GEMM (float32 operands, standard normal) under exact rank-r
   multipliers: r = 1 (truncated(7)), 2 (lowblock(7, 3)), 3 and 4 (the
   surrogates of mitchell(7) of those ranks): native ms, LUT-kernel ms,
   jnp.dot ms (precision HIGHEST, no TF32) and the ratios; the target is
   native / dot <= r + 0.5.
2. The training step (forward, backward, Adam) of LeNet-5 and ResNet-8 at
   batch 128 under the rank-2 design lowblock(7, 3): native, LUT kernel and
   plain float32.
All timed in the same run, alternately (bench_gemm.time_pair).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import approxjax as ax
from approxjax import networks

sys.path.insert(0, str(Path(__file__).parent))
from bench_gemm import record, time_pair  # noqa: E402
from bench_training import _stepper  # noqa: E402

DN = (((1,), (0,)), ((), ()))


def _gemm(method, mult, a, b):
    fn = jax.jit(lambda a, b: ax.dot_general(a, b, DN, multiplier=mult, method=method))
    return lambda: fn(a, b)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n = args.size
    a = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))
    mults = [
        ax.truncated(7),
        ax.lowblock(7, 3),
        ax.surrogate(ax.mitchell(7), rank=3),
        ax.surrogate(ax.mitchell(7), rank=4),
    ]
    gemm_rows = []
    print(f"GEMM {n}^3 (ms)", flush=True)
    print(f"{'multiplier':<18} {'r':>2} {'native':>8} {'lut':>8} {'dot':>8} "
          f"{'nat/dot':>8} {'lut/dot':>8} {'target':>7}", flush=True)  # fmt: skip
    for mult in mults:
        nat, ref = time_pair(_gemm("native", mult, a, b), lambda: dot(a, b), args.repeats)
        lut, ref2 = time_pair(_gemm("lut", mult, a, b), lambda: dot(a, b), args.repeats)
        r = mult.rank
        gemm_rows.append((mult.name, r, nat, lut, ref, ref2))
        print(f"{mult.name:<18} {r:>2} {nat:>8.1f} {lut:>8.1f} {ref:>8.1f} {nat / ref:>8.2f} "
              f"{lut / ref2:>8.2f} {r + 0.5:>7.1f}", flush=True)  # fmt: skip
    design = ax.lowblock(7, 3)
    cases = [
        ("LeNet-5, 28x28x1, batch 128", networks.LeNet5(10), (128, 28, 28, 1)),
        ("ResNet-8, 32x32x3, batch 128", networks.ResNet(10, depth=8), (128, 32, 32, 3)),
    ]
    step_rows = []
    print(f"\ntraining step under {design.name} (rank {design.rank}), ms", flush=True)
    print(f"{'model':<30} {'native':>8} {'lut':>8} {'float32':>8} {'nat/f32':>8} "
          f"{'lut/nat':>8}", flush=True)  # fmt: skip
    for label, model, shape in cases:
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, shape[0]), jnp.int32)
        native = ax.Arithmetic(multiplier=design, method="native")
        by_table = ax.Arithmetic(multiplier=design, method="lut")
        nat, f32 = time_pair(
            _stepper(model, x, y, native), _stepper(model, x, y, None), args.repeats
        )
        lut, _ = time_pair(
            _stepper(model, x, y, by_table), _stepper(model, x, y, None), args.repeats
        )
        step_rows.append((label, nat, lut, f32))
        print(f"{label:<30} {nat:>8.1f} {lut:>8.1f} {f32:>8.1f} {nat / f32:>8.2f} "
              f"{lut / nat:>8.2f}", flush=True)  # fmt: skip
    if args.record:
        record(
            "bench_native.py (GEMM)",
            f"{n}^3 float32 GEMM under exact rank-r multipliers: method='native' (r XLA dots "
            "of transformed operands) and the LUT kernel, against jnp.dot (HIGHEST) timed "
            "alternately with each; target native/dot <= r + 0.5.",
            ["multiplier", "r", "native ms", "lut ms", "dot ms", "native/dot", "lut/dot",
             "target"],
            [[name, str(r), f"{nat:.1f}", f"{lut:.1f}", f"{ref:.1f}", f"{nat / ref:.2f}",
              f"{lut / ref2:.2f}", f"{r + 0.5:.1f}"]
             for name, r, nat, lut, ref, ref2 in gemm_rows],
        )  # fmt: skip
        record(
            "bench_native.py (training)",
            f"Training step (forward, backward, Adam) under the rank-2 design {design.name}: "
            "natively, by the LUT kernel, and the same model in float32.",
            ["model", "native ms", "lut ms", "float32 ms", "native/float32", "lut/native"],
            [[label, f"{nat:.1f}", f"{lut:.1f}", f"{f32:.1f}", f"{nat / f32:.2f}",
              f"{lut / nat:.2f}"] for label, nat, lut, f32 in step_rows],
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
