"""Error metrics of integer multipliers, as the field reports them.

Over every pair of operand codes for a table (up to 12 x 12 bits), and over
``samples`` uniformly random pairs (default 2**20, seed 0, evaluated in a
child process) for a function model of wider operands, whose ``wce`` and
``wcre_percent`` are then the worst cases *found*, with ``P = a * b`` the exact and ``A`` the
multiplier's product, ``e = A - P`` and ``R = 2**(bits_a + bits_b)`` the
product's range:

* ``mae`` = mean ``|e|``; ``mae_percent`` = 100 ``mae / R``
* ``wce`` = max ``|e|``; ``wce_percent`` = 100 ``wce / R``
* ``wcre_percent`` = 100 max ``|e| / max(|P|, 1)``
* ``ep`` = 100 x the share of pairs with ``e != 0`` (percent)
* ``mre`` = 100 mean ``|e| / max(|P|, 1)`` (percent)
* ``mse`` = mean ``e**2``; ``bias`` = mean ``e``

(EvoApproxLib's MAE%, WCE%, EP% and MRE% follow the same definitions; the
``max(|P|, 1)`` keeps pairs with a zero product, where any error counts as
relative to 1.) Integer sums are exact (Python ints), so ``mae``, ``wce``,
``ep``, ``mse`` and ``bias`` are the correctly rounded values of their exact
rational definitions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from approxjax._src.arithmetic.integer import IntegerMultiplier


@dataclasses.dataclass(frozen=True)
class IntegerCharacterization:
    """Error metrics of an integer multiplier (see the module docstring)."""

    name: str
    bits: tuple[int, int]
    signed: tuple[bool, bool]
    count: int
    exhaustive: bool
    mae: float
    mae_percent: float
    wce: int
    wce_percent: float
    wcre_percent: float
    ep: float
    mre: float
    mse: float
    bias: float
    cost: dict[str, float] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return format_integer_table([self])


SAMPLED_PAIRS = 1 << 20


def _pairs(mult: IntegerMultiplier, samples: int | None, seed: int):
    """Blocks of (approx, exact) products: over all pairs of a table, over
    ``samples`` random pairs of a function model."""
    if mult.function is not None:
        rng = np.random.default_rng(seed)
        (lo_a, hi_a), (lo_b, hi_b) = mult.code_range(0), mult.code_range(1)
        count = SAMPLED_PAIRS if samples is None else samples
        for start in range(0, count, 1 << 18):
            n = min(1 << 18, count - start)
            a = rng.integers(lo_a, hi_a + 1, n)
            b = rng.integers(lo_b, hi_b + 1, n)
            yield mult.products(a, b), a * b
        return
    if samples is not None:
        raise ValueError(
            f"{mult.name} is a table: its metrics are exhaustive (samples apply to function "
            "models of operands over 12 bits)"
        )
    table = np.asarray(mult.table, np.int64)
    va, vb = mult.values(0), mult.values(1)
    step = max(1, (1 << 20) // vb.size)
    for i0 in range(0, va.size, step):
        rows = slice(i0, i0 + step)
        yield table[rows], va[rows, None] * vb[None, :]


_LIMB = 20  # blocks hold at most 2**20 values, so sums of 40-bit terms fit int64


def _exact_sum(x: np.ndarray) -> int:
    """The exact sum of an int64 block (Python int)."""
    if x.size and int(np.abs(x).max()) >= 1 << (2 * _LIMB):
        return sum(int(v) for v in x.reshape(-1))
    return int(x.sum())


def _exact_square_sum(ae: np.ndarray) -> int:
    """The exact sum of squares of a block of non-negative int64 errors:
    with ``ae = h 2**20 + l`` the three partial sums fit int64 (errors
    below 2**40; beyond, Python ints)."""
    if ae.size and int(ae.max()) >= 1 << (2 * _LIMB):
        return sum(int(v) * int(v) for v in ae.reshape(-1))
    h, lo = ae >> _LIMB, ae & ((1 << _LIMB) - 1)
    return (
        (int((h * h).sum()) << (2 * _LIMB))
        + (int((h * lo).sum()) << (_LIMB + 1))
        + int((lo * lo).sum())
    )


def characterize_integer(
    mult: IntegerMultiplier, samples: int | None = None, seed: int = 0
) -> IntegerCharacterization:
    """The error metrics of one integer multiplier (see the module docstring).

    Raises:
      TypeError: not one IntegerMultiplier.
      ValueError: ``samples`` for a table, or not a positive int.
    """
    if not isinstance(mult, IntegerMultiplier) or mult.batch_shape:
        raise TypeError("characterize takes one IntegerMultiplier (not a stack)")
    if samples is not None and (
        isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1
    ):
        raise ValueError(
            f"samples of an integer function model is a count of random pairs; got {samples!r}"
        )
    count = abs_sum = sq_sum = err_sum = wrong = wce = 0
    rel_sums: list[float] = []
    wcre = 0.0
    for approx, exact in _pairs(mult, samples, seed):
        e = approx - exact
        ae = np.abs(e)
        count += e.size
        abs_sum += _exact_sum(ae)
        sq_sum += _exact_square_sum(ae)
        err_sum += _exact_sum(e)
        wrong += int(np.count_nonzero(e))
        wce = max(wce, int(ae.max()))
        rel = ae / np.maximum(np.abs(exact), 1).astype(np.float64)
        rel_sums.append(math.fsum(rel.reshape(-1)))
        wcre = max(wcre, float(rel.max()))
    out_range = float(1 << (mult.bits[0] + mult.bits[1]))
    return IntegerCharacterization(
        name=mult.name,
        bits=mult.bits,
        signed=mult.signed,
        count=count,
        exhaustive=count == (1 << (mult.bits[0] + mult.bits[1])),
        mae=abs_sum / count,
        mae_percent=100 * abs_sum / count / out_range,
        wce=wce,
        wce_percent=100 * wce / out_range,
        wcre_percent=100 * wcre,
        ep=100 * wrong / count,
        mre=100 * math.fsum(rel_sums) / count,
        mse=sq_sum / count,
        bias=err_sum / count,
        cost=dict(mult.cost),
    )


def format_integer_table(results: list[IntegerCharacterization]) -> str:
    """Several characterizations side by side, one row per multiplier."""
    head = (
        f"{'multiplier':<24} {'MAE':>9} {'MAE%':>8} {'WCE':>8} {'WCE%':>8} {'WCRE%':>8} "
        f"{'EP%':>7} {'MRE%':>8} {'MSE':>11} {'bias':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.name:<24} {r.mae:>9.4g} {r.mae_percent:>8.4f} {r.wce:>8d} {r.wce_percent:>8.4f} "
            f"{r.wcre_percent:>8.2f} {r.ep:>7.2f} {r.mre:>8.4f} {r.mse:>11.5g} {r.bias:>9.4g}"
            + ("" if r.exhaustive else "  (sampled)")
        )
    return "\n".join(lines)


def _error_grid(mult: IntegerMultiplier, side: int = 256):
    """Operand values (ascending) and the errors ``A - a*b`` over their
    grid: every value of a table's operands, ``side`` evenly spaced values
    of a function model's."""
    if mult.function is None:
        va, vb = np.sort(mult.values(0)), np.sort(mult.values(1))
    else:
        va, vb = (np.unique(np.linspace(*mult.code_range(i), side).round().astype(np.int64))
                  for i in (0, 1))  # fmt: skip
    return va, vb, mult.products(va[:, None], vb[None, :]) - va[:, None] * vb[None, :]


def plot_integer_errors(mults: list[IntegerMultiplier], path: Any = None):
    """Error heat maps (``A - P`` over the operand values) and histograms,
    one row per integer multiplier; returns the figure (saved when ``path``)."""
    from approxjax._src.tools.characterize import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(len(mults), 2, figsize=(11, 4.2 * len(mults)), squeeze=False)
    for (ax0, ax1), mult in zip(axes, mults, strict=True):
        va, vb, err = _error_grid(mult)
        lim = max(1, int(np.abs(err).max()))
        im = ax0.imshow(
            err, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest",
            extent=(vb.min() - 0.5, vb.max() + 0.5, va.min() - 0.5, va.max() + 0.5),
            aspect="auto",
        )  # fmt: skip
        ax0.set_xlabel("operand b")
        ax0.set_ylabel("operand a")
        grid = "" if mult.function is None else f" ({va.size} x {vb.size} values)"
        ax0.set_title(f"{mult.name}: error A - a*b{grid}", fontsize=10)
        fig.colorbar(im, ax=ax0, fraction=0.046)
        values = err.reshape(-1)
        ax1.hist(values, bins=101, color="tab:blue")
        ax1.axvline(
            float(values.mean()), color="k", ls="--", lw=1, label=f"bias {values.mean():.3g}"
        )
        ax1.set_yscale("log")
        ax1.set_xlabel("error")
        ax1.set_ylabel("operand pairs")
        ax1.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
