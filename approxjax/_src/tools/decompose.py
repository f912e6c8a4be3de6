"""Low-rank structure of a multiplier's table: ``decompose``.

A table ``L`` (``2**m x 2**m``) has rank r when ``L[i, j] == sum_t u_t[i] *
v_t[j]`` for r pairs of factors. Then every simulated product is a sum of r
exact products of transformed operands (the sign and the exponents factor
out of each term), so a GEMM under the multiplier is r ordinary GEMMs of
elementwise-transformed operands (Yu et al., IEEE TVLSI 2024, generalised).
The CPU kernel already runs rank-1 (separable) tables that way.

How the rank is found, exactly:

1. greedy cross approximation in float64 (pivot on the largest remaining
   entry) proposes a rank r and pivot rows I and columns J;
2. the proposal is verified in exact integer arithmetic: the table is scaled
   to integers Z (its entries are float32, so a power of two does it) and
   ``Z * det(C) == Z[:, J] @ adj(C) @ Z[I, :]`` (``C = Z[I, J]``, the
   skeleton identity, which holds iff rank(Z) <= r once C is nonsingular) is
   checked modulo enough 31-bit primes that their product exceeds twice the
   largest possible magnitude: equality modulo all of them is equality;
3. if it fails, the next rank is tried, up to ``max_rank``.

The factors returned are the skeleton's, ``u_t`` the pivot columns and ``v =
C^-1 Z[I, :]`` (in float64: exact in exact arithmetic, rounded here; their
float64 reconstruction error is reported). The best rank-r approximations
(for surrogates, never used silently) come from a randomized SVD (numpy
only), with their residuals relative to each entry and to the multiplier's
own error from the exact significand product.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from approxjax._src.arithmetic.multipliers import Multiplier, significands

# 31-bit primes: products of two fit int64 with room for one addition.
_PRIMES = (2147483647, 2147483629, 2147483587, 2147483579, 2147483563, 2147483549,
           2147483543, 2147483497, 2147483489, 2147483477, 2147483423, 2147483399,
           2147483353, 2147483323, 2147483269, 2147483249, 2147483237, 2147483179)  # fmt: skip


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


def _integer_table(lut: np.ndarray) -> np.ndarray:
    """The table as integers Z = L * 2**s: int64 where they fit, else Python ints."""
    nonzero = lut[lut != 0].astype(np.float64)
    if nonzero.size == 0:
        return np.zeros(lut.shape, dtype=np.int64)
    # float32 entries have 24 significant bits: L * 2**(24 - lowest exponent) is integral.
    shift = 24 - int(np.frexp(nonzero)[1].min())
    scaled = np.ldexp(lut.astype(np.float64), shift)
    if float(np.abs(scaled).max()) < 2.0**52:
        return scaled.astype(np.int64)
    return np.vectorize(lambda x: int(math.ldexp(float(x), shift)), otypes=[object])(lut)


def _bound_bits(z: np.ndarray, r: int) -> int:
    """Bits of the largest |Z det(C)| or |Z[:,J] adj(C) Z[I,:]| entry."""
    largest = int(np.abs(z).max()) if z.dtype != object else max(abs(int(x)) for x in z.ravel())
    top = max(1, largest.bit_length())
    # det of r x r: <= r! * top**r; each product side: r terms of top * top**(r-1) * top.
    return (r + 1) * top + math.ceil(math.log2(math.factorial(r) * r + 1)) + 2


def _det_adj_mod(c: np.ndarray, p: int) -> tuple[int, np.ndarray]:
    """det(C) and adj(C) modulo p (C small, integer entries)."""
    r = c.shape[0]

    def det(mat):
        n = len(mat)
        if n == 0:
            return 1
        if n == 1:
            return mat[0][0] % p
        total = 0
        for j in range(n):
            minor = [row[:j] + row[j + 1 :] for row in mat[1:]]
            total += (-1) ** j * mat[0][j] * det(minor)
        return total % p

    rows = [[int(x) % p for x in row] for row in c]
    adj = np.zeros((r, r), dtype=np.int64)
    for i in range(r):
        for j in range(r):
            minor = [row[:j] + row[j + 1 :] for k, row in enumerate(rows) if k != i]
            adj[j, i] = ((-1) ** (i + j) * det(minor)) % p
    return det(rows), adj


def _verify(z: np.ndarray, rows: list[int], cols: list[int]) -> bool:
    """Whether rank(Z) <= len(rows), exactly (the skeleton identity, mod primes)."""
    r = len(rows)
    c = z[np.ix_(rows, cols)]
    needed = _bound_bits(z, r) + 1
    covered = 0
    nonzero_det = False
    for p in _PRIMES:
        d, adj = _det_adj_mod(c, p)
        if d == 0:
            continue  # det(C) may vanish mod p only: another prime
        nonzero_det = True
        zp = (z % p).astype(np.int64)
        left = (zp * d) % p
        m_ = np.zeros((r, z.shape[1]), dtype=np.int64)  # adj(C) @ Z[I, :] mod p
        for t in range(r):
            for s in range(r):
                m_[t] = (m_[t] + adj[t, s] * zp[rows[s]]) % p
        right = np.zeros(z.shape, dtype=np.int64)
        for t in range(r):
            right = (right + (zp[:, cols[t]][:, None] * m_[t][None, :]) % p) % p
        if not np.array_equal(left, right):
            return False
        covered += p.bit_length() - 1
        if covered >= needed:
            return True
    if not nonzero_det:
        return False
    raise ValueError(  # pragma: no cover - needs tables beyond 500 bits of magnitude
        f"decompose: not enough primes to verify a rank-{r} identity of {needed} bits"
    )


def _cross(lut: np.ndarray, max_rank: int) -> list[tuple[int, int]]:
    """Pivots of greedy cross approximation (float64), up to max_rank + 1."""
    e = lut.astype(np.float64).copy()
    scale = float(np.abs(e).max()) or 1.0
    pivots = []
    for _ in range(max_rank):
        i, j = np.unravel_index(int(np.argmax(np.abs(e))), e.shape)
        if abs(e[i, j]) <= 1e-12 * scale:
            break
        pivots.append((int(i), int(j)))
        e -= np.outer(e[:, j], e[i, :]) / e[i, j]
    return pivots


def _svd_residuals(lut: np.ndarray, max_rank: int, own: float) -> tuple[RankResidual, ...]:
    """Residuals of the best rank-r approximations (randomized SVD)."""
    a = lut.astype(np.float64)
    n = a.shape[0]
    k = min(n, max_rank + 8)
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(a @ rng.standard_normal((n, k)))
    for _ in range(4):  # power iterations: the leading singular vectors converge
        q, _ = np.linalg.qr(a.T @ q)
        q, _ = np.linalg.qr(a @ q)
    ub, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)
    u = q @ ub
    positive = a > 0
    out = []
    for r in range(1, max_rank + 1):
        rr = min(r, len(s))
        approx = (u[:, :rr] * s[:rr]) @ vt[:rr]
        rel = np.abs(approx - a)[positive] / a[positive]
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
    if not isinstance(multiplier, Multiplier):
        raise TypeError(f"decompose takes a Multiplier; got {multiplier!r}")
    if multiplier.batch_shape:
        raise ValueError(f"decompose takes one multiplier, not a stack of {len(multiplier)}")
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or not 1 <= max_rank <= 16:
        raise ValueError(f"max_rank must be an integer from 1 to 16; got {max_rank!r}")
    lut = np.asarray(multiplier.lut, np.float32)
    m = multiplier.mantissa_bits
    x = significands(m)
    exact_products = np.outer(x, x)
    own = float(np.mean(np.abs(lut.astype(np.float64) - exact_products) / exact_products))
    residuals = _svd_residuals(lut, max_rank, own)
    pivots = _cross(lut, max_rank)
    z = _integer_table(lut)
    rank = u = v = err = None
    if not np.any(lut):
        rank, u, v, err = 0, np.zeros((0, lut.shape[0])), np.zeros((0, lut.shape[0])), 0.0
    else:
        a = lut.astype(np.float64)
        for r in range(1, len(pivots) + 1):  # the pivots of rank r are a prefix
            rows, cols = [q[0] for q in pivots[:r]], [q[1] for q in pivots[:r]]
            if _verify(z, rows, cols):
                rank = r
                u = a[:, cols].T.copy()
                v = np.linalg.solve(a[np.ix_(rows, cols)], a[rows, :])
                nz = a != 0
                err = float(np.max(np.abs(u.T @ v - a)[nz] / a[nz]))
                break
    return Decomposition(
        name=multiplier.name,
        mantissa_bits=m,
        rank=rank,
        exact=rank is not None,
        u=u,
        v=v,
        reconstruction_error=err,
        residuals=residuals,
        own_error=own,
    )
