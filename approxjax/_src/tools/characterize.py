"""How good is a multiplier? Error metrics over its table and over real operands.

Two views:

* the **table**: every pair of significands ``(1 + i/2**m, 1 + j/2**m)``
  (exhaustive for ``m <= 10``, a million random pairs above), the table entry
  against the exact product of those significands: the multiplier's own
  arithmetic error;
* **samples**: operand values you pass (a trained layer's weights and
  activations, say), the full simulated product (:mod:`approxjax.reference`:
  operand truncation, the table, sign and exponent) against the exact product:
  the error a network sees.

Metrics (``approx`` and ``exact`` products, ``rel = (approx - exact) / exact``):
mean relative error (the bias), MRED = mean ``|rel|``, NMED = mean
``|approx - exact|`` / max ``|exact|``, the largest ``|rel|`` and where it occurs,
and the error probability (the share of products that are not exact).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from approxjax._src.arithmetic import reference
from approxjax._src.arithmetic.integer import IntegerMultiplier
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.tools.integer_errors import characterize_integer, plot_integer_errors

EXHAUSTIVE_MAX_BITS = 10
RANDOM_PAIRS = 1 << 20


@dataclasses.dataclass(frozen=True)
class ErrorStats:
    """Error metrics of one set of products."""

    count: int
    mean_relative_error: float
    mred: float
    nmed: float
    max_relative_error: float
    worst_operands: tuple[float, float]
    error_probability: float


@dataclasses.dataclass(frozen=True)
class Characterization:
    """Error metrics of a multiplier over its table and, if given, operand samples."""

    name: str
    mantissa_bits: int
    table: ErrorStats
    exhaustive: bool
    samples: ErrorStats | None = None

    def __str__(self) -> str:
        return format_table([self])


def _stats(approx: np.ndarray, exact: np.ndarray, a: np.ndarray, b: np.ndarray) -> ErrorStats:
    approx, exact = approx.reshape(-1), exact.reshape(-1)
    err = approx - exact
    rel = err / exact
    k = int(np.argmax(np.abs(rel)))
    return ErrorStats(
        count=int(exact.size),
        mean_relative_error=float(rel.mean()),
        mred=float(np.abs(rel).mean()),
        nmed=float(np.abs(err).mean() / np.abs(exact).max()),
        max_relative_error=float(np.abs(rel)[k]),
        worst_operands=(float(a.reshape(-1)[k]), float(b.reshape(-1)[k])),
        error_probability=float((err != 0).mean()),
    )


def table_errors(multiplier: Multiplier, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(approx, exact, x, y) over the table's significand pairs (or a random subset)."""
    m = multiplier.mantissa_bits
    side = 1 << m
    lut = np.asarray(multiplier.lut, np.float64)
    if m <= EXHAUSTIVE_MAX_BITS:
        i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, side, RANDOM_PAIRS)
        j = rng.integers(0, side, RANDOM_PAIRS)
    x = 1 + i / side
    y = 1 + j / side
    return lut[i, j], x * y, x, y


def _sample_pairs(samples: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if isinstance(samples, (tuple, list)) and len(samples) == 2:
        a = np.asarray(samples[0], np.float32)
        b = np.asarray(samples[1], np.float32)
        if a.shape == b.shape:  # elementwise pairs
            a, b = a.reshape(-1), b.reshape(-1)
            keep = np.isfinite(a) & np.isfinite(b) & (a != 0) & (b != 0)
            a, b = a[keep], b[keep]
            if a.size == 0:
                raise ValueError("samples need finite nonzero operand values")
            if a.size > RANDOM_PAIRS:
                pick = rng.choice(a.size, RANDOM_PAIRS, replace=False)
                a, b = a[pick], b[pick]
            return a, b
    else:
        a = b = np.asarray(samples, np.float32)
    a = a.reshape(-1)[np.isfinite(a.reshape(-1)) & (a.reshape(-1) != 0)]
    b = b.reshape(-1)[np.isfinite(b.reshape(-1)) & (b.reshape(-1) != 0)]
    if a.size == 0 or b.size == 0:
        raise ValueError("samples need finite nonzero operand values")
    n = min(RANDOM_PAIRS, max(a.size, b.size) * 16)
    return a[rng.integers(0, a.size, n)], b[rng.integers(0, b.size, n)]


def characterize(multiplier: Multiplier, samples: Any = None, *, seed: int = 0) -> Characterization:
    """Error metrics of a multiplier (see the module docstring); of an
    :class:`~approxjax.IntegerMultiplier`, the integer metrics (``mae``,
    ``wce``, ``ep``, ``mre``, ``mse``, ...: an ``IntegerCharacterization``,
    defined in :mod:`approxjax._src.tools.integer_errors`).

    Args:
      multiplier: a single multiplier.
      samples: optional operands: one array (pairs drawn from it), or a pair
        ``(a, b)`` (elementwise pairs when shapes match, else random pairs, for
        example weights and activations of a layer). Zeros and non-finite
        values are left out. For an integer function model (operands over
        12 bits): how many random operand pairs to draw (default 2**20);
        integer tables are characterized exhaustively.
      seed: seed for the random pairs.
    """
    if isinstance(multiplier, IntegerMultiplier):
        return characterize_integer(multiplier, samples, seed)
    if not isinstance(multiplier, Multiplier) or multiplier.batch_shape:
        raise TypeError("characterize takes one Multiplier (not a stack)")
    approx, exact, x, y = table_errors(multiplier, seed)
    table = _stats(approx, exact, x, y)
    sample_stats = None
    if samples is not None:
        a, b = _sample_pairs(samples, seed)
        got = np.asarray(reference.multiply(a, b, multiplier.lut), np.float64)
        want = a.astype(np.float64) * b.astype(np.float64)
        ok = np.isfinite(got) & (want != 0)
        sample_stats = _stats(got[ok], want[ok], a[ok], b[ok])
    return Characterization(
        name=multiplier.name,
        mantissa_bits=multiplier.mantissa_bits,
        table=table,
        exhaustive=multiplier.mantissa_bits <= EXHAUSTIVE_MAX_BITS,
        samples=sample_stats,
    )


def format_table(results: Sequence[Any]) -> str:
    """Several characterizations side by side, one row per multiplier and view
    (integer multipliers' in a table of their own, after the float ones)."""
    from approxjax._src.tools.integer_errors import IntegerCharacterization, format_integer_table

    integer = [r for r in results if isinstance(r, IntegerCharacterization)]
    results = [r for r in results if not isinstance(r, IntegerCharacterization)]
    tables = [_format_float_table(results)] if results else []
    if integer:
        tables.append(format_integer_table(integer))
    return "\n\n".join(tables)


def _format_float_table(results: Sequence[Characterization]) -> str:
    head = (
        f"{'multiplier':<22} {'view':<8} {'bias':>10} {'MRED':>10} {'NMED':>10} "
        f"{'max |rel|':>10} {'at (a, b)':>22} {'P(err)':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        views = [("table" if r.exhaustive else "table~", r.table)]
        if r.samples is not None:
            views.append(("samples", r.samples))
        for view, s in views:
            at = f"({s.worst_operands[0]:.4g}, {s.worst_operands[1]:.4g})"
            lines.append(
                f"{r.name:<22} {view:<8} {s.mean_relative_error:>10.3e} {s.mred:>10.3e} "
                f"{s.nmed:>10.3e} {s.max_relative_error:>10.3e} {at:>22} "
                f"{s.error_probability:>7.1%}"
            )
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot (a headless backend where there is no display)."""
    try:
        import matplotlib

        if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plots need matplotlib: pip install 'approxjax[plot]' (or matplotlib)"
        ) from e
    return plt


def _relative_errors(multiplier: Multiplier, seed: int = 0):
    """Relative errors on the table's significand grid, or, where the table is
    exact (every entry the product of its truncated significands), on random
    full-precision significands: then the error is the operands' truncation."""
    m = multiplier.mantissa_bits
    side = 1 << m
    lut = np.asarray(multiplier.lut, np.float64)
    sig = 1 + np.arange(side) / side
    rel = (lut - np.outer(sig, sig)) / np.outer(sig, sig)
    if np.any(rel != 0):
        return rel, "table"
    rng = np.random.default_rng(seed)
    n = 256
    x = np.sort(rng.uniform(1, 2, n)).astype(np.float32)
    got = np.asarray(reference.multiply(x[:, None], x[None, :], multiplier.lut), np.float64)
    exact = np.outer(x.astype(np.float64), x.astype(np.float64))
    return (got - exact) / exact, "sampled"


def plot_errors(multipliers: Multiplier | Sequence[Multiplier], path: str | None = None):
    """Relative-error heat map and histogram, one row per multiplier.

    Integer multipliers get their error ``A - a*b`` over the operand values.
    A multiplier whose table is exact on its own grid (``truncated(m)``: every
    entry is the exact product of the truncated significands) has no error
    there; its row shows the error on random full-precision significands
    instead (the truncation of the operands), and its title says so.

    Returns the matplotlib figure (saved to ``path`` as one PNG when given).
    """
    single = isinstance(multipliers, (Multiplier, IntegerMultiplier))
    mults = [multipliers] if single else list(multipliers)
    integer = [isinstance(m, IntegerMultiplier) for m in mults]
    if all(integer):
        return plot_integer_errors(mults, path)
    if any(integer):
        raise TypeError(
            "plot_errors draws float or integer multipliers, not both in one figure; got "
            + ", ".join(m.name for m in mults)
        )
    plt = pyplot()
    fig, axes = plt.subplots(len(mults), 2, figsize=(11, 4.2 * len(mults)), squeeze=False)
    for (ax0, ax1), mult in zip(axes, mults, strict=True):
        rel, view = _relative_errors(mult)
        lo, hi = float(rel.min()), float(rel.max())
        if lo < 0 < hi:  # both signs: diverging, white at zero
            lim = max(-lo, hi)
            cmap, vmin, vmax = "RdBu_r", -lim, lim
        elif hi <= 0:  # never overestimates: the whole scale on the negative side
            cmap, vmin, vmax = "Blues_r", min(lo, -1e-12), 0.0
        else:
            cmap, vmin, vmax = "Reds", 0.0, max(hi, 1e-12)
        im = ax0.imshow(
            rel, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, extent=(1, 2, 1, 2),
            interpolation="nearest", aspect="auto",
        )  # fmt: skip
        ax0.set_xlabel("significand of b")
        ax0.set_ylabel("significand of a")
        title = f"{mult.name}: relative error"
        if view == "sampled":
            title += "\n(table exact: random full-precision operands, truncation error)"
        ax0.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax0, fraction=0.046)
        values = rel.reshape(-1)
        ax1.hist(values, bins=min(100, max(10, rel.shape[0])), color="tab:blue")
        ax1.axvline(
            float(values.mean()), color="k", ls="--", lw=1, label=f"mean {values.mean():.2e}"
        )
        ax1.set_xlabel("relative error")
        ax1.set_ylabel("significand pairs")
        ax1.xaxis.set_major_locator(plt.MaxNLocator(5))
        ax1.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
        ax1.set_title(f"histogram ({view})", fontsize=10)
        ax1.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
