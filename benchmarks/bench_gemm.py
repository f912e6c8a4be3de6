"""Approximate GEMM against XLA's float32 dot, measured in the same run.

Usage:
  python benchmarks/bench_gemm.py             # print the table
  python benchmarks/bench_gemm.py --record    # ... and append it to benchmarks/RESULTS.md
  python benchmarks/bench_gemm.py --quick     # fewer shapes (smoke test)

Each row times a jitted call (median of repeats after a warm-up) of
``approxjax.dot_general`` and of ``jnp.dot`` in float32 on the same operands.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import approxjax as ax

DN = (((1,), (0,)), ((), ()))

# (label, M, K, N): the 1024 cube, and the GEMMs of LeNet-5 and of a small
# CIFAR ResNet's 3x3 convolution (as im2col GEMMs) at batch 128, forward
# (x @ W), input gradient (g @ W^T) and weight gradient (x^T @ g), with the
# operands stored as in training: W^T is W stored (N, K) and x^T is x stored
# (K, M), read by both the kernel and XLA's dot as they are.
SHAPES = [
    ("square 1024", 1024, 1024, 1024),
    ("lenet conv2 fwd", 128 * 10 * 10, 150, 16),
    ("lenet conv2 dgrad", 128 * 10 * 10, 16, 150),
    ("lenet conv2 wgrad", 150, 128 * 10 * 10, 16),
    ("lenet fc1 fwd", 128, 400, 120),
    ("lenet fc1 dgrad", 128, 120, 400),
    ("lenet fc1 wgrad", 400, 128, 120),
    ("resnet 3x3x16 fwd", 128 * 32 * 32, 144, 16),
    ("resnet 3x3x16 wgrad", 144, 128 * 32 * 32, 16),
]


def _time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def time_pair(approx, native, repeats: int) -> tuple[float, float]:
    """Median ms of two zero-argument calls, timed alternately (after a
    warm-up of each) so that both see the same state of a shared machine.
    Calls of a few ms are repeated more (up to ~0.3 s of the slower one, at
    most 200 times): a median of 7 millisecond calls moves with every
    hiccup of a shared machine."""
    jax.block_until_ready(approx())
    t = time.perf_counter()
    jax.block_until_ready(approx())
    jax.block_until_ready(native())
    slowest = time.perf_counter() - t
    repeats = max(repeats, min(200, int(0.3 / max(slowest, 1e-6))))
    times = ([], [])
    for _ in range(repeats):
        for fn, out in zip((approx, native), times, strict=True):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            out.append(time.perf_counter() - t)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def _row(label, m_rows, k, n, m, repeats, stack=1, kind="truncated"):
    """One table row. A stack row times ``stack`` vmapped multipliers against
    one multiplier (approximate, timed alternately): its ratio is the cost of
    the stack in single-multiplier calls (the target is <= stack). ``kind``
    names the multiplier. truncated(m) and drum(m) are separable (their LUTs
    are exactly f[i] * g[j]): a GEMM of transformed operands with exact
    products, no tables. mitchell has at most m + 1 significant bits per
    entry, so m <= 7 gets compact tables. "drum, tables" forces drum onto
    float tables (KernelOptions(separable=False)): the general path, for LUTs that
    neither factor nor fit bfloat16."""
    rng = np.random.default_rng(0)
    dn = DN
    a_shape, b_shape = (m_rows, k), (k, n)
    if label.endswith("dgrad"):  # g @ W^T
        b_shape, dn = (n, k), (((1,), (1,)), ((), ()))
    elif label.endswith("wgrad"):  # x^T @ g
        a_shape, dn = (k, m_rows), (((0,), (0,)), ((), ()))
    a = jnp.asarray(rng.standard_normal(a_shape), jnp.float32)
    b = jnp.asarray(rng.standard_normal(b_shape), jnp.float32)
    native = jax.jit(
        lambda a, b: jax.lax.dot_general(a, b, dn, precision=jax.lax.Precision.HIGHEST)
    )
    opts = ax.KernelOptions(separable=not kind.endswith(", tables"))
    one = jax.jit(lambda a, b, mu: ax.dot_general(a, b, dn, multiplier=mu, options=opts))
    mult = getattr(ax, kind.split(",")[0])(m)
    if stack == 1:
        t_approx, t_base = time_pair(lambda: one(a, b, mult), lambda: native(a, b), repeats=repeats)
    else:
        mults = ax.stack([mult] * stack)
        many = jax.jit(jax.vmap(one, (None, None, 0)))
        t_approx, t_base = time_pair(
            lambda: many(a, b, mults), lambda: one(a, b, mult), repeats=repeats
        )
    shape = f"{label} ({m_rows}x{k}x{n})"
    if kind != "truncated":
        shape += f", {kind}"
    if stack > 1:
        shape += f" x{stack} multipliers (vs one multiplier)"
    return {
        "shape": shape,
        "m": m,
        "approx_ms": t_approx,
        "native_ms": t_base,
        "ratio": t_approx / t_base,
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    host = f"{cpu}, {os.cpu_count()} cores, kernel variant {ax.cpu_kernel_variant()}"
    if jax.default_backend() == "gpu":
        return f"{jax.devices()[0].device_kind} (host: {host})"
    return host


def _commit() -> str:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(script: str, note: str, header: list[str], rows: list[list[str]]) -> None:
    """Appends one run to benchmarks/RESULTS.md: script, date, commit, machine, table."""
    path = Path(__file__).with_name("RESULTS.md")
    lines = [
        f"\n### {script}, {datetime.date.today().isoformat()}, commit {_commit()}\n",
        f"Machine: {_machine()}; jax {jax.__version__}; backend {jax.default_backend()}. "
        f"{note}\n\n",
        "| " + " | ".join(header) + " |\n",
        "|" + "---|" * len(header) + "\n",
    ]
    lines += ["| " + " | ".join(cells) + " |\n" for cells in rows]
    with path.open("a") as f:
        f.writelines(lines)
    print(f"appended to {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="few shapes, few repeats")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    plan = [(s, 7, 1, "truncated") for s in SHAPES[: 1 if args.quick else None]]
    if not args.quick:
        plan += [(SHAPES[0], m, 1, "truncated") for m in (3, 5, 10, 12)]
        plan += [(s, 7, 1, "mitchell") for s in SHAPES]
        plan += [(SHAPES[0], 7, 1, "drum"), (SHAPES[7], 7, 1, "drum")]
        plan += [(SHAPES[0], 7, 1, "drum, tables"), (SHAPES[7], 7, 1, "drum, tables")]
        square = ("square 512", 512, 512, 512)
        plan += [(square, 7, 1, "truncated"), (square, 7, 8, "truncated")]
        plan += [(SHAPES[0], 7, 8, "truncated")]
    rows = []
    print(f"{'shape':<48} {'m':>3} {'approx ms':>10} {'native ms':>10} {'ratio':>7}", flush=True)
    for (label, mm, k, n), m, stack, kind in plan:
        r = _row(label, mm, k, n, m, repeats, stack, kind)
        rows.append(r)
        print(
            f"{r['shape']:<48} {r['m']:>3} {r['approx_ms']:>10.2f} {r['native_ms']:>10.2f} "
            f"{r['ratio']:>7.2f}",
            flush=True,
        )
    if args.record:
        record(
            "bench_gemm.py",
            "Multiplier truncated(m) unless named (truncated and drum are separable: an FMA "
            "GEMM of transformed operands; mitchell: compact tables; drum, tables: float "
            "tables forced). Native: `jnp.dot` "
            "float32, precision "
            "HIGHEST, timed alternately with the approximate call; in the row of a stack "
            'of multipliers the "native" column is one approximate multiplier instead.',
            ["shape", "m", "approx ms", "native ms", "ratio"],
            [
                [r["shape"], str(r["m"])]
                + [f"{r[k]:.2f}" for k in ("approx_ms", "native_ms", "ratio")]
                for r in rows
            ],
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
