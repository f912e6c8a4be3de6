"""decompose: exact ranks (checked against exact rational elimination), factors,
and the residuals of best rank-r approximations (against a full SVD)."""

from fractions import Fraction

import numpy as np
import pytest

import approxjax as ax


def exact_rank(lut: np.ndarray) -> int:
    """The rank of a table over the rationals (Gaussian elimination in Fractions)."""
    rows = [[Fraction(float(x)) for x in row] for row in lut]
    rank, cols = 0, len(rows[0])
    for c in range(cols):
        pivot = next((r for r in range(rank, len(rows)) if rows[r][c] != 0), None)
        if pivot is None:
            continue
        rows[rank], rows[pivot] = rows[pivot], rows[rank]
        for r in range(len(rows)):
            if r != rank and rows[r][c] != 0:
                f = rows[r][c] / rows[rank][c]
                rows[r] = [a - f * b for a, b in zip(rows[r], rows[rank], strict=True)]
        rank += 1
    return rank


def _table(m, fn):
    x = ax.significands(m)
    return ax.Multiplier(np.asarray(fn(x[:, None], x[None, :]), np.float32), name="made")


@pytest.mark.parametrize(
    "mult",
    [ax.truncated(3), ax.truncated(7), ax.truncated(11), ax.drum(7, 4), ax.drum(9, 3)],
    ids=lambda m: m.name,
)
def test_separable_catalog_entries_have_rank_one(mult):
    d = ax.decompose(mult)
    assert d.exact and d.rank == 1 and d.u.shape == (1, 1 << mult.mantissa_bits)
    lut = np.asarray(mult.lut, np.float64)
    np.testing.assert_allclose(d.u.T @ d.v, lut, rtol=1e-14)
    assert d.reconstruction_error < 1e-14
    assert d.residuals[0].max_relative < 1e-13  # the best rank-1 approximation is the table


@pytest.mark.parametrize(
    "fn,rank",
    [
        (lambda x, y: x * y + 2**-4 * (x + y), 2),  # (x + c)(y + c) - c^2
        (lambda x, y: x * y + 2**-3 * x * x * y + 2**-5 * y * y, 2),
        (lambda x, y: x * y + 2**-4 * x * x + 2**-6 * y * y, 3),  # xy, x^2 . 1, 1 . y^2
        (lambda x, y: 1 + 0 * x * y, 1),
    ],
)
def test_exact_rank_of_structured_tables(fn, rank):
    mult = _table(4, fn)
    assert exact_rank(np.asarray(mult.lut)) == rank  # the independent statement
    d = ax.decompose(mult)
    assert d.rank == rank and d.exact
    np.testing.assert_allclose(d.u.T @ d.v, np.asarray(mult.lut, np.float64), rtol=1e-12)


def test_rank_matches_exact_elimination_on_random_tables():
    rng = np.random.default_rng(0)
    for trial in range(12):
        r = int(rng.integers(1, 6))
        # Integer factors: an exact rank <= r table of moderate integers, scaled.
        u = rng.integers(1, 9, (r, 8)).astype(np.float64)
        v = rng.integers(1, 9, (r, 8)).astype(np.float64)
        lut = (u.T @ v) / 64.0
        if trial % 3 == 0:
            lut[int(rng.integers(8)), int(rng.integers(8))] += 2.0**-6  # one entry off
        mult = ax.Multiplier(lut.astype(np.float32))
        truth = exact_rank(np.asarray(mult.lut))
        d = ax.decompose(mult, max_rank=6)
        assert d.rank == (truth if truth <= 6 else None), (trial, truth, d.rank)


def test_tables_without_low_rank():
    for mult in (ax.mitchell(5), ax.mbm(4), ax.alm_soa(5, 2)):
        d = ax.decompose(mult)
        assert not d.exact and d.rank is None and d.u is None
        assert np.linalg.matrix_rank(np.asarray(mult.lut, np.float64)) > 4
        assert "no exact rank <= 4" in str(d)
    # float32 rounding of exact products breaks rank 1 (26-bit products): not exact.
    assert ax.decompose(ax.truncated(12), max_rank=1).rank is None


def test_residuals_match_a_full_svd():
    mult = ax.mitchell(6)
    d = ax.decompose(mult, max_rank=4)
    lut = np.asarray(mult.lut, np.float64)
    u, s, vt = np.linalg.svd(lut)
    x = ax.significands(6)
    own = np.mean(np.abs(lut - np.outer(x, x)) / np.outer(x, x))
    assert d.own_error == pytest.approx(own, rel=1e-12)
    for r, res in zip(range(1, 5), d.residuals, strict=True):
        approx = (u[:, :r] * s[:r]) @ vt[:r]
        rel = np.abs(approx - lut) / lut
        assert res.rank == r
        assert res.max_relative == pytest.approx(rel.max(), rel=1e-6)
        assert res.mean_relative == pytest.approx(rel.mean(), rel=1e-6)
        assert res.vs_own_error == pytest.approx(rel.mean() / own, rel=1e-6)
    assert d.residuals[3].mean_relative < d.residuals[0].mean_relative


def test_decompose_bad_input():
    with pytest.raises(TypeError, match="decompose takes a Multiplier"):
        ax.decompose("mitchell7")
    with pytest.raises(ValueError, match="not a stack of 2"):
        ax.decompose(ax.stack([ax.mitchell(3), ax.mbm(3)]))
    with pytest.raises(ValueError, match="max_rank must be an integer from 1 to 16; got 0"):
        ax.decompose(ax.mitchell(3), max_rank=0)
