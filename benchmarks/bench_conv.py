"""Approximate convolution against ``lax.conv_general_dilated`` float32: time and memory.

Usage: python benchmarks/bench_conv.py [--record] [--repeats N] [--batch 64]

ResNet-style 3x3 convolutions (NHWC, HWIO, SAME, stride 1), forward and the
forward + both gradients (``jax.vjp``), under mitchell(7) and in plain float32,
measured in the same run. Memory is XLA's own account of the compiled
program (``memory_analysis()``: temporary buffers, besides arguments and
outputs), compared with the float32 program plus the size of the input.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import approxjax as ax

sys.path.insert(0, str(Path(__file__).parent))
from bench_gemm import record, time_pair  # noqa: E402

DIMS = ("NHWC", "HWIO", "NHWC")


def _conv(multiplier):
    def fwd(x, w):
        if multiplier is None:
            return lax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=DIMS, precision=lax.Precision.HIGHEST
            )
        return ax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=DIMS, multiplier=multiplier
        )

    def train(x, w):
        y, vjp = jax.vjp(fwd, x, w)
        return vjp(y)

    return jax.jit(fwd), jax.jit(train)


def _temp_mb(fn, *args) -> float:
    stats = fn.lower(*args).compile().memory_analysis()
    return stats.temp_size_in_bytes / 2**20 if stats is not None else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    cases = [(args.batch, 32, 32, 64, 64), (args.batch, 32, 32, 16, 16)]
    rows = []
    print(
        f"{'case':<44} {'approx ms':>10} {'native ms':>10} {'ratio':>6} "
        f"{'approx tmp MB':>13} {'native tmp MB':>13} {'input MB':>9}",
        flush=True,
    )
    for b, h, w_, cin, cout in cases:
        x = jnp.asarray(rng.standard_normal((b, h, w_, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) * 0.1, jnp.float32)
        n_fwd, n_train = _conv(None)
        a_fwd, a_train = _conv(ax.mitchell(7))
        in_mb = x.size * 4 / 2**20
        for kind, nat, app in (("forward", n_fwd, a_fwd), ("fwd + both grads", n_train, a_train)):
            t_a, t_n = time_pair(partial(app, x, w), partial(nat, x, w), repeats=args.repeats)
            row = (
                f"3x3 {cin}->{cout}, {b}x{h}x{w_}, {kind}",
                t_a,
                t_n,
                _temp_mb(app, x, w),
                _temp_mb(nat, x, w),
                in_mb,
            )
            rows.append(row)
            print(
                f"{row[0]:<44} {t_a:>10.1f} {t_n:>10.1f} {t_a / t_n:>6.2f} "
                f"{row[3]:>13.1f} {row[4]:>13.1f} {in_mb:>9.1f}",
                flush=True,
            )
    if args.record:
        record(
            "bench_conv.py",
            "mitchell(7) vs `lax.conv_general_dilated` float32 (HIGHEST); temporary memory "
            "from XLA's `memory_analysis()`.",
            ["case", "approx ms", "native ms", "ratio", "approx temp MB", "native temp MB"]
            + ["input MB"],
            [
                [label, f"{t_a:.1f}", f"{t_n:.1f}", f"{t_a / t_n:.2f}"]
                + [f"{v:.1f}" for v in (ma, mn, mi)]
                for label, t_a, t_n, ma, mn, mi in rows
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
