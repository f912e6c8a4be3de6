"""Low-rank structure of a multiplier's table: ``decompose``.

A table ``L`` (``2**m x 2**m``) has rank r when ``L[i, j] == sum_t u_t[i] *
v_t[j]`` for r pairs of factors. Then every simulated product is a sum of r
exact products of transformed operands (the sign and the exponents factor
out of each term), so a GEMM under the multiplier is r ordinary GEMMs of
elementwise-transformed operands (Yu et al., IEEE TVLSI 2024, generalised).
The CPU kernel already runs rank-1 (separable) tables that way.

How the rank is found (exactly: cross approximation verified in integer
arithmetic modulo primes) and how the factors are chosen is stated in
:mod:`approxjax._src.arithmetic.lowrank`. The best rank-r approximations (for
surrogates, never used silently: :func:`surrogate`) come from a randomized
SVD (numpy only), with their residuals relative to each entry and to the
multiplier's own error from the exact significand product.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from approxjax._src.arithmetic.lowrank import balanced, best_factors, check_rank, exact_factors
from approxjax._src.arithmetic.multipliers import Multiplier, significands
from approxjax._src.arithmetic.reference import products


@dataclasses.dataclass(frozen=True)
class RankResidual:
    """The error of the best rank-r approximation of a table (Eckart-Young,
    from a randomized SVD), per entry relative to the entry.

    Attributes:
      rank: r.
      max_relative: the largest ``|approx - L| / L`` over the entries.
      mean_relative: its mean.
      vs_own_error: ``mean_relative`` divided by the multiplier's own mean
        relative error from the exact significand product (None where that is
        zero): how much the surrogate adds to what the design already errs.
    """

    rank: int
    max_relative: float
    mean_relative: float
    vs_own_error: float | None


@dataclasses.dataclass(frozen=True)
class Decomposition:
    """What :func:`decompose` found (see the module docstring).

    Attributes:
      name, mantissa_bits: the multiplier's.
      rank: the smallest r <= ``max_rank`` with an exact rank-r factorization,
        or None if there is none.
      exact: whether ``rank`` is set.
      u, v: the factors of an exact decomposition, shape ``(rank, 2**m)``
        (float64), with ``L[i, j] == sum_t u[t, i] * v[t, j]`` in exact
        arithmetic; None without one.
      reconstruction_error: the largest ``|sum_t u v - L| / L`` of the factors
        evaluated in float64 (0 where they are exact in floating point too).
      float32_error: the same for the factors rounded to float32, as the
        native path uses them (it enters its error bound).
      native: whether ``method="native"`` can use the factors (their first
        pair is positive everywhere and their float32 error is small).
      residuals: the best rank-r approximations, r = 1 .. ``max_rank``.
      own_error: the table's mean relative error from the exact significand
        product.
    """

    name: str
    mantissa_bits: int
    rank: int | None
    exact: bool
    u: np.ndarray | None
    v: np.ndarray | None
    reconstruction_error: float | None
    float32_error: float | None
    native: bool
    residuals: tuple[RankResidual, ...]
    own_error: float

    def __str__(self) -> str:
        found = f"rank {self.rank} (exact)" if self.exact else "no exact rank"
        limit = len(self.residuals)
        if not self.exact:
            found += f" <= {limit}"
        parts = ", ".join(
            f"r={r.rank}: max {r.max_relative:.2e} mean {r.mean_relative:.2e}"
            for r in self.residuals
        )
        return f"{self.name}: {found}; best rank-r residual (relative) {parts}"


def _check_one(what: str, multiplier) -> None:
    if not isinstance(multiplier, Multiplier):
        raise TypeError(f"{what} takes a Multiplier; got {multiplier!r}")
    if multiplier.batch_shape:
        raise ValueError(f"{what} takes one multiplier, not a stack of {len(multiplier)}")


def _svd_residuals(lut: np.ndarray, max_rank: int, own: float) -> tuple[RankResidual, ...]:
    """Residuals of the best rank-r approximations (randomized SVD)."""
    a = lut.astype(np.float64)
    u, v = best_factors(lut, max_rank)
    positive = a > 0
    out = []
    for r in range(1, max_rank + 1):
        rel = np.abs(u[:r].T @ v[:r] - a)[positive] / a[positive]
        mean = float(rel.mean()) if rel.size else 0.0
        out.append(
            RankResidual(
                rank=r,
                max_relative=float(rel.max()) if rel.size else 0.0,
                mean_relative=mean,
                vs_own_error=mean / own if own > 0 else None,
            )
        )
    return tuple(out)


def decompose(multiplier: Multiplier, max_rank: int = 4) -> Decomposition:
    """The smallest exact rank of a multiplier's table (up to ``max_rank``),
    its factors, and the residuals of its best rank-1 .. ``max_rank``
    approximations (see the module docstring).

    Args:
      multiplier: a single Multiplier (not a stack).
      max_rank: the largest rank looked for, 1 to 16.

    Returns:
      A :class:`Decomposition`.

    Raises:
      TypeError: ``multiplier`` is not a Multiplier.
      ValueError: a stack, or ``max_rank`` out of range.

    Example::

      >>> import approxjax as ax
      >>> ax.decompose(ax.truncated(5)).rank
      1
    """
    _check_one("decompose", multiplier)
    check_rank("max_rank", max_rank)
    lut = np.asarray(multiplier.lut, np.float32)
    m = multiplier.mantissa_bits
    x = significands(m)
    exact_products = np.outer(x, x)
    own = float(np.mean(np.abs(lut.astype(np.float64) - exact_products) / exact_products))
    residuals = _svd_residuals(lut, max_rank, own)
    found = exact_factors(lut, max_rank)
    rank = u = v = err = err32 = None
    if found is not None:
        rank, u, v, err32 = found.rank, found.u, found.v, found.float32_error
        a = lut.astype(np.float64)
        nz = a != 0
        recon = u.T @ v
        err = float(np.max(np.abs(recon - a)[nz] / a[nz])) if nz.any() else 0.0
    return Decomposition(
        name=multiplier.name,
        mantissa_bits=m,
        rank=rank,
        exact=rank is not None,
        u=u,
        v=v,
        reconstruction_error=err,
        float32_error=err32,
        native=found is not None and found.usable,
        residuals=residuals,
        own_error=own,
    )


@dataclasses.dataclass(frozen=True)
class SurrogateResidual:
    """What a surrogate (:func:`surrogate`) changes, against the table it
    stands in for.

    Attributes:
      of: the original multiplier's name.
      rank: the surrogate's rank.
      max_relative, mean_relative: the largest and the mean ``|S - L| / L``
        over the entries (S the surrogate's table, L the original's).
      own_error: the original's mean relative error from the exact
        significand product.
      vs_own_error: ``mean_relative / own_error`` (None where that is zero).
      gemm_relative: on a sample GEMM (64 x 256 x 64, standard normal
        operands, seed 0, products summed exactly): ``||G_S - G_L|| /
        ||G_L||`` (Frobenius).
      gemm_vs_own: ``||G_S - G_L|| / ||G_L - G_exact||``: the surrogate's
        change of the GEMM relative to the design's own error there.
    """

    of: str
    rank: int
    max_relative: float
    mean_relative: float
    own_error: float
    vs_own_error: float | None
    gemm_relative: float
    gemm_vs_own: float | None


def _sample_gemm(table: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sample GEMM's simulated products under ``table`` (the reference
    rule), summed exactly (float64)."""
    p = products(a, b, (((1,), (0,)), ((), ())), np.asarray(table, np.float32))
    return np.asarray(p, np.float64).sum(-1)[0]


def surrogate(multiplier: Multiplier, rank: int = 2) -> Multiplier:
    """A low-rank stand-in for a multiplier (opt-in, never used silently).

    The best rank-``rank`` approximation of the table (Eckart-Young, by a
    randomized SVD: its residual is :func:`decompose`'s ``residuals[rank-1]``),
    as float32 factors; its table is their products rounded to float32. It is
    a Multiplier of its own, named ``"<name>~r<rank>"``, with those factors
    (so ``method="auto"``/``"native"`` run it as ``rank`` XLA dots) and its
    :class:`SurrogateResidual` in ``metadata["surrogate"]`` (a dict).

    Raises:
      TypeError: not a Multiplier.
      ValueError: a stack or traced table, ``rank`` out of 1..16, or an
        approximation with a negative entry (a table far from low rank).

    Example::

      >>> import approxjax as ax
      >>> fast = ax.surrogate(ax.mitchell(7), rank=2)
      >>> fast.name, fast.rank
      ('mitchell7~r2', 2)
    """
    _check_one("surrogate", multiplier)
    check_rank("rank", rank)
    lut = np.asarray(multiplier.lut, np.float64)
    m = multiplier.mantissa_bits
    u, v = balanced(*best_factors(lut, rank))
    u32, v32 = u.astype(np.float32), v.astype(np.float32)
    table = (u32.astype(np.float64).T @ v32.astype(np.float64)).astype(np.float32)
    if np.any(table < 0):
        raise ValueError(
            f"the rank-{rank} approximation of {multiplier.name} has negative entries "
            f"(min {float(table.min()):.3g}); a table this far from low rank has no "
            "useful surrogate of this rank"
        )
    x = significands(m)
    exact = np.outer(x, x)
    own = float(np.mean(np.abs(lut - exact) / exact))
    positive = lut > 0
    rel = np.abs(table.astype(np.float64) - lut)[positive] / lut[positive]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 256)).astype(np.float32)
    b = rng.standard_normal((256, 64)).astype(np.float32)
    g_l = _sample_gemm(lut, a, b)
    g_s = _sample_gemm(table, a, b)
    g_x = _sample_gemm(exact, a, b)
    diff = float(np.linalg.norm(g_s - g_l))
    own_gemm = float(np.linalg.norm(g_l - g_x))
    residual = SurrogateResidual(
        of=multiplier.name,
        rank=rank,
        max_relative=float(rel.max()) if rel.size else 0.0,
        mean_relative=float(rel.mean()) if rel.size else 0.0,
        own_error=own,
        vs_own_error=float(rel.mean()) / own if own > 0 and rel.size else None,
        gemm_relative=diff / float(np.linalg.norm(g_l)),
        gemm_vs_own=diff / own_gemm if own_gemm > 0 else None,
    )
    metadata = {"surrogate_of": multiplier.name, "surrogate": dataclasses.asdict(residual)}
    return Multiplier(
        table, name=f"{multiplier.name}~r{rank}", metadata=metadata, factors=(u32, v32)
    )
