"""Low-rank factors of a significand table, found exactly.

A table ``L`` (``2**m x 2**m``) has rank r when ``L[i, j] == sum_t u_t[i] *
v_t[j]`` for r pairs of factors. Then every simulated product is a sum of r
products of transformed operands (sign and exponent factor out of each term),
and a GEMM under the multiplier is r ordinary GEMMs (the native path,
:mod:`approxjax._src.ops.native`).

How the rank is found, exactly:

1. greedy cross approximation in float64 proposes pivots; the first pivot is
   a strictly positive row and column (``[0, 0]`` where it can), so that the
   first pair of factors is positive everywhere (what the native path needs to
   give inf times a nonzero its sign, as the table's rule does); then each
   pivot is the largest remaining entry;
2. the proposal is verified in exact integer arithmetic: the table is scaled
   to integers Z (its entries are float32, so a power of two does it) and
   ``Z * det(C) == Z[:, J] @ adj(C) @ Z[I, :]`` (``C = Z[I, J]``, the
   skeleton identity, which holds iff rank(Z) <= r once C is nonsingular) is
   checked modulo enough 31-bit primes that their product exceeds twice the
   largest possible magnitude: equality modulo all of them is equality;
3. if it fails, the next rank is tried, up to ``max_rank``.

The factors are the cross approximation's terms (float64, exact in exact
arithmetic), each scaled by a power of two so that its largest ``|u|`` is in
[1, 2), then rounded to float32. Their *float32 error*, the largest
``|sum_t u v - L| / L`` of the rounded factors (evaluated exactly), is
reported and enters the native path's error bound; it is 0 where the factors
are exact (the catalog's separable designs give their own, exact, factors).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Factors whose float32 rounding reproduces the table less well than this are
# not used by the native path (a badly conditioned skeleton).
MAX_FLOAT32_ERROR = 2.0**-20

# 31-bit primes: products of two fit int64 with room for one addition.
_PRIMES = (2147483647, 2147483629, 2147483587, 2147483579, 2147483563, 2147483549,
           2147483543, 2147483497, 2147483489, 2147483477, 2147483423, 2147483399,
           2147483353, 2147483323, 2147483269, 2147483249, 2147483237, 2147483179,
           2147483171, 2147483137, 2147483123, 2147483077, 2147483069, 2147483059,
           2147483053, 2147483033, 2147483029, 2147482951, 2147482949, 2147482943,
           2147482937, 2147482921, 2147482877, 2147482873, 2147482867, 2147482859,
           2147482819, 2147482817, 2147482811, 2147482801)  # fmt: skip


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


def _det_adj_mod(c: np.ndarray, p: int) -> tuple[int, np.ndarray | None]:
    """det(C) and adj(C) = det(C) C^-1 modulo the prime p (Gauss-Jordan in
    Python integers; C small); adj is None where det(C) = 0 mod p."""
    r = c.shape[0]
    rows = [[int(x) % p for x in row] + [int(i == k) for i in range(r)] for k, row in enumerate(c)]
    det = 1
    for col in range(r):
        pivot = next((k for k in range(col, r) if rows[k][col]), None)
        if pivot is None:
            return 0, None
        if pivot != col:
            rows[col], rows[pivot] = rows[pivot], rows[col]
            det = -det
        det = det * rows[col][col] % p
        inv = pow(rows[col][col], p - 2, p)
        rows[col] = [x * inv % p for x in rows[col]]
        for k in range(r):
            if k != col and rows[k][col]:
                f = rows[k][col]
                rows[k] = [(x - f * y) % p for x, y in zip(rows[k], rows[col], strict=True)]
    det %= p
    adj = np.array([[det * x % p for x in row[r:]] for row in rows], dtype=np.int64)
    return det, adj


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


@dataclasses.dataclass(frozen=True)
class Factors:
    """An exact low-rank factorization of a table.

    Attributes:
      rank: r (verified exactly).
      u, v: factors of shape ``(r, 2**m)`` (float64: exact in exact
        arithmetic, rounded here); the native path uses them rounded to
        float32.
      float32_error: the largest ``|sum_t u[t, i] v[t, j] - L[i, j]| / L[i, j]``
        of the float32 factors (exact evaluation; inf where a zero entry is
        not reproduced as zero).
      usable: whether the native path can run on them: the first pair is
        positive everywhere and the float32 error is at most
        ``MAX_FLOAT32_ERROR``.
    """

    rank: int
    u: np.ndarray
    v: np.ndarray
    float32_error: float
    usable: bool


def check_rank(name: str, value) -> int:
    """A rank argument: an integer from 1 to 16 (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
        raise ValueError(f"{name} must be an integer from 1 to 16; got {value!r}")
    return value


def _first_pivot(a: np.ndarray) -> tuple[int, int] | None:
    """A pivot whose row and column are strictly positive ([0, 0] first)."""
    rows = np.flatnonzero(np.all(a > 0, axis=1))
    cols = np.flatnonzero(np.all(a > 0, axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    return int(rows[0]), int(cols[0])


def _cross_terms(a: np.ndarray, max_rank: int):
    """Pivots and terms (u_t, v_t) of greedy cross approximation (float64)."""
    e = a.copy()
    scale = float(np.abs(e).max()) or 1.0
    first = _first_pivot(a)
    pivots, us, vs = [], [], []
    for t in range(max_rank):
        if t == 0 and first is not None:
            i, j = first
        else:
            i, j = (int(x) for x in np.unravel_index(int(np.argmax(np.abs(e))), e.shape))
        if abs(e[i, j]) <= 1e-12 * scale:
            break
        u, v = e[:, j].copy(), e[i, :] / e[i, j]
        e -= np.outer(u, v)
        pivots.append((i, j))
        us.append(u)
        vs.append(v)
    return pivots, us, vs, first is not None


def float32_error(a: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """Largest relative error of the float32 factors against the table
    (products of float32 factors are exact in float64; r small)."""
    recon = u.astype(np.float64).T @ v.astype(np.float64)
    nz = a != 0
    if np.any(recon[~nz] != 0):
        return math.inf
    return float(np.max(np.abs(recon - a)[nz] / a[nz])) if nz.any() else 0.0


def balanced(us, vs) -> tuple[np.ndarray, np.ndarray]:
    """Each term scaled by a power of two (exact) so that max |u_t| is in [1, 2)."""
    tops = [float(np.abs(u).max()) for u in us]
    scales = [2.0 ** -math.floor(math.log2(t)) if t > 0 else 1.0 for t in tops]
    u = np.stack([x * s for x, s in zip(us, scales, strict=True)])
    v = np.stack([x / s for x, s in zip(vs, scales, strict=True)])
    return u, v


def exact_factors(lut: np.ndarray, max_rank: int) -> Factors | None:
    """The smallest exact rank of ``lut`` up to ``max_rank`` and its factors
    (see the module docstring), or None if there is none."""
    a = np.asarray(lut, np.float64)
    if not a.any():
        n = a.shape[0]
        return Factors(0, np.zeros((0, n)), np.zeros((0, n)), 0.0, False)
    pivots, us, vs, positive = _cross_terms(a, max_rank)
    z = _integer_table(np.asarray(lut, np.float32))
    for r in range(1, len(pivots) + 1):  # the pivots of rank r are a prefix
        if _verify(z, [p[0] for p in pivots[:r]], [p[1] for p in pivots[:r]]):
            u, v = balanced(us[:r], vs[:r])
            u32, v32 = u.astype(np.float32), v.astype(np.float32)
            err = float32_error(a, u32, v32)
            usable = positive and bool(np.all(u32[0] > 0) and np.all(v32[0] > 0))
            return Factors(r, u, v, err, usable and err <= MAX_FLOAT32_ERROR)
    return None


def check_factors(lut: np.ndarray, u, v) -> Factors:
    """Given factors, checked against the table (ValueError if they do not
    reproduce it within ``MAX_FLOAT32_ERROR`` or their first pair is not positive)."""
    a = np.asarray(lut, np.float64)
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    n = a.shape[-1]
    if u.ndim != 2 or u.shape != v.shape or u.shape[1] != n or u.shape[0] < 1:
        raise ValueError(
            f"factors must be two arrays of shape (rank, {n}) with rank >= 1; got "
            f"{u.shape} and {v.shape}"
        )
    u32, v32 = u.astype(np.float32), v.astype(np.float32)
    if not (np.all(u32[0] > 0) and np.all(v32[0] > 0)):
        raise ValueError("the first pair of factors must be positive everywhere (u[0], v[0] > 0)")
    err = float32_error(a, u32, v32)
    if not err <= MAX_FLOAT32_ERROR:
        raise ValueError(
            f"the factors do not reproduce the table: largest relative error {err:.3g} "
            f"(at most {MAX_FLOAT32_ERROR:.3g} allowed)"
        )
    return Factors(u.shape[0], u, v, err, True)


def best_factors(lut: np.ndarray, rank: int, seed: int = 0):
    """The best rank-``rank`` approximation (Eckart-Young, by a randomized
    SVD, numpy only) as factors ``(rank, n)`` each (float64): ``u_t = s_t
    U[:, t]``, ``v_t = V[t]``, signs chosen so that the leading pair is
    positive (Perron: a positive table's leading singular vectors are)."""
    a = lut.astype(np.float64)
    n = a.shape[0]
    k = min(n, rank + 8)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(a @ rng.standard_normal((n, k)))
    for _ in range(4):  # power iterations: the leading singular vectors converge
        q, _ = np.linalg.qr(a.T @ q)
        q, _ = np.linalg.qr(a @ q)
    ub, s, vt = np.linalg.svd(q.T @ a, full_matrices=False)
    u = (q @ ub)[:, :rank].T * s[:rank, None]
    v = vt[:rank].copy()
    for t in range(u.shape[0]):
        if u[t].sum() < 0:
            u[t], v[t] = -u[t], -v[t]
    if u.shape[0] < rank:  # a table of lower rank: zero terms
        u = np.concatenate([u, np.zeros((rank - u.shape[0], n))])
        v = np.concatenate([v, np.zeros((rank - v.shape[0], n))])
    return u, v
