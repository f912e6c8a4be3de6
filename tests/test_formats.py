"""approxjax.formats: conversion bit for bit against ml_dtypes and against an
enumeration of each format's values, every rounding mode, specials, errors."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from _util import bits
from hypothesis import given
from hypothesis import strategies as st

from approxjax import formats
from approxjax._src.arithmetic.formats import ML_DTYPES

F32_MAX = np.finfo(np.float32).max


def probe_values(fmt, rng, n=20000):
    """float32 values around every binade of ``fmt`` (its subnormals, the
    boundaries, overflow) and the specials, both signs."""
    lo = fmt.emin - fmt.mantissa_bits - 2
    hi = min(fmt.emax + 2, 127)
    mag = rng.uniform(1, 2, n) * np.exp2(rng.integers(lo, hi + 1, n).astype(np.float64))
    grid = enumerate_values(fmt)
    mids = (grid[1:] + grid[:-1]) / 2  # ties
    extra = [0.0, 1e-45, 1e-40, fmt.max, fmt.max * 1.01, fmt.max * 2, F32_MAX, np.inf, np.nan]
    vals = np.concatenate([mag, grid, mids, np.nextafter(mids, 0), extra])
    vals = np.clip(vals, 0, F32_MAX).astype(np.float32)  # keeps inf and NaN
    return np.concatenate([vals, -vals])


def enumerate_values(fmt):
    """Every finite value >= 0 of ``fmt`` in order (float64), from its definition."""
    m = fmt.mantissa_bits
    frac = np.arange(1 << m) / (1 << m)
    values = [0.0]
    if fmt.subnormals:
        values += list(frac[1:] * 2.0**fmt.emin)
    for e in range(fmt.emin, fmt.emax + 1):
        values += list((1 + frac) * 2.0**e)
    values = np.array(values)
    return values[values <= fmt.max]


@pytest.mark.parametrize("name", sorted(ML_DTYPES))
def test_nearest_even_matches_ml_dtypes(name, rng):
    """The default conversion equals ml_dtypes' cast bit for bit, NaN, infinity,
    overflow, saturation and subnormals included."""
    fmt = formats.get(name)
    x = probe_values(fmt, rng)
    got = np.asarray(jax.jit(lambda v: formats.convert(v, fmt))(x))
    dtype = np.float16 if ML_DTYPES[name] == "float16" else getattr(ml_dtypes, ML_DTYPES[name])
    with np.errstate(over="ignore"):
        want = x.astype(dtype).astype(np.float32)
    same = (bits(got) == bits(want)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), (x[~same][:5], got[~same][:5], want[~same][:5])


def _oracle(x, fmt, rounding):
    """The conversion by search in the enumerated values (formats with
    subnormals, IEEE overflow): nearest with ties to the even index (a value's
    index in that list has the parity of its last mantissa bit)."""
    grid = enumerate_values(fmt)
    step = grid[-1] - grid[-2]
    grid = np.append(grid, grid[-1] + step)  # the first value past max: overflow
    a = np.abs(x.astype(np.float64))
    i = np.clip(np.searchsorted(grid, a, side="right") - 1, 0, len(grid) - 2)
    lo, hi = grid[i], grid[i + 1]
    exact = a == lo
    if rounding == "toward_zero":
        j = i
    elif rounding == "away_from_zero":
        j = np.where(exact, i, i + 1)
    else:
        d_lo, d_hi = a - lo, hi - a
        j = np.where(d_lo < d_hi, i, np.where(d_hi < d_lo, i + 1, np.where(i % 2 == 0, i, i + 1)))
    out = grid[j]
    out = np.where(j == len(grid) - 1, np.inf, out)
    out = np.where(rounding == "toward_zero", np.minimum(out, fmt.max), out)
    out = np.where(np.isinf(a), np.inf, out)
    return np.copysign(out, x).astype(np.float32)


@pytest.mark.parametrize("spec", ["e5m2", "e3m4", "e4m3ieee", "e6m5", "bfloat16", "e7m1"])
@pytest.mark.parametrize("rounding", ["nearest_even", "toward_zero", "away_from_zero"])
def test_every_rounding_against_enumerated_values(spec, rounding, rng):
    """Custom IEEE-style formats (no ml_dtypes twin) and the directed modes,
    against a search in the list of all the format's values."""
    fmt = (
        formats.Format(exponent_bits=4, mantissa_bits=3, name="e4m3ieee")
        if spec == "e4m3ieee"
        else formats.get(spec)
    )
    x = probe_values(fmt, rng)
    x = x[np.isfinite(x) & (np.abs(x) < 2.0**120)]
    got = np.asarray(formats.convert(x, fmt, rounding))
    want = _oracle(x, fmt, rounding)
    same = bits(got) == bits(want)
    assert same.all(), (x[~same][:5], got[~same][:5], want[~same][:5])


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e2m1", "float16", "bfloat16", "e3m4"])
@pytest.mark.parametrize("rounding", ["nearest_even", "toward_zero", "away_from_zero"])
def test_values_of_the_format_are_fixed_points(name, rounding):
    fmt = formats.get(name)
    grid = enumerate_values(fmt).astype(np.float32)
    x = np.concatenate([grid, -grid])
    np.testing.assert_array_equal(bits(formats.convert(x, fmt, rounding)), bits(x))
    assert formats.is_representable(x, fmt).all()


def test_formats_without_subnormals_flush():
    fmt = formats.Format(exponent_bits=5, mantissa_bits=2, subnormals=False, name="e5m2ftz")
    x = np.array([fmt.smallest_normal * 0.75, -fmt.smallest_normal * 0.3, fmt.smallest_normal])
    got = np.asarray(formats.convert(x.astype(np.float32), fmt))
    np.testing.assert_array_equal(bits(got), bits(np.float32([0.0, -0.0, fmt.smallest_normal])))


def test_stochastic_rounding_is_keyed_and_unbiased():
    fmt = formats.get("bfloat16")
    x = np.full(200_000, 1 + 2**-7 / 3, np.float32)  # a third of a quantum above 1
    a = np.asarray(formats.convert(x, fmt, "stochastic", jax.random.key(1)))
    b = np.asarray(formats.convert(x, fmt, "stochastic", jax.random.key(1)))
    c = np.asarray(formats.convert(x, fmt, "stochastic", jax.random.key(2)))
    np.testing.assert_array_equal(bits(a), bits(b))
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) == {np.float32(1), np.float32(1 + 2**-7)}
    # Up with probability 1/3: the mean is x within 5 standard errors.
    p_up = np.mean(a > 1)
    assert abs(p_up - 1 / 3) < 5 * np.sqrt(1 / 3 * 2 / 3 / len(x))
    # Values of the format are never moved.
    grid = enumerate_values(fmt)[::97].astype(np.float32)
    np.testing.assert_array_equal(
        bits(formats.convert(grid, fmt, "stochastic", jax.random.key(3))), bits(grid)
    )


@given(
    e=st.integers(2, 8),
    m=st.integers(0, 10),
    seed=st.integers(0, 2**31),
    rounding=st.sampled_from(["toward_zero", "away_from_zero", "stochastic"]),
)
def test_directed_and_stochastic_roundings_bracket_the_value(e, m, seed, rounding):
    """Every mode returns one of the two format values around x (below for
    toward_zero, above for away_from_zero)."""
    fmt = formats.Format(exponent_bits=e, mantissa_bits=m)
    rng = np.random.default_rng(seed)
    x = (rng.uniform(-1, 1, 512) * fmt.max).astype(np.float32)
    key = jax.random.key(seed) if rounding == "stochastic" else None
    got = np.abs(np.asarray(formats.convert(x, fmt, rounding, key), np.float64))
    down = np.abs(np.asarray(formats.convert(x, fmt, "toward_zero"), np.float64))
    up = np.abs(np.asarray(formats.convert(x, fmt, "away_from_zero"), np.float64))
    assert np.all((down <= np.abs(x)) & (np.abs(x) <= np.where(np.isinf(up), np.inf, up)))
    assert np.all((got == down) | (got == up))
    assert np.all(np.signbit(formats.convert(x, fmt, rounding, key)) == np.signbit(x))


def test_presets_and_names():
    assert formats.get("bf16") is formats.get("bfloat16")
    assert formats.get("fp8_e4m3").max == 448.0
    assert formats.get("e5m2").max == 57344.0
    assert formats.get("e2m1").max == 6.0
    assert formats.get("float16").smallest_subnormal == 2.0**-24
    custom = formats.get("e3m4")
    assert (custom.exponent_bits, custom.mantissa_bits, custom.bias) == (3, 4, 3)
    assert "e4m3" in formats.presets()
    # float32 itself converts nothing (and keeps NaN payloads).
    x = np.array([1.1, np.nan, -3e-42], np.float32)
    np.testing.assert_array_equal(bits(formats.convert(x, "float32")), bits(x))
    # bfloat16 and float16 inputs are accepted.
    assert formats.convert(jnp.bfloat16(1.5), "e2m1").dtype == jnp.float32


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: formats.Format(exponent_bits=9, mantissa_bits=2),
            ValueError,
            r"exponent_bits .* got 9",
        ),
        (
            lambda: formats.Format(exponent_bits=4, mantissa_bits=24),
            ValueError,
            r"mantissa_bits .* got 24",
        ),
        (
            lambda: formats.Format(exponent_bits=4, mantissa_bits=2.0),
            TypeError,
            "mantissa_bits must be an int",
        ),
        (
            lambda: formats.Format(exponent_bits=4, mantissa_bits=3, has_inf=False),
            ValueError,
            "overflow='inf'",
        ),
        (
            lambda: formats.Format(exponent_bits=8, mantissa_bits=23, bias=0),
            ValueError,
            "float32 cannot hold",
        ),
        (lambda: formats.get("fp9"), ValueError, r"unknown format 'fp9'; known: float32"),
        (lambda: formats.get(8), TypeError, "a format is a Format or a name; got 8"),
        (
            lambda: formats.convert(np.ones(2, np.float32), "e4m3", "nearest"),
            ValueError,
            "rounding must be one of",
        ),
        (
            lambda: formats.convert(np.ones(2, np.float32), "e4m3", "stochastic"),
            ValueError,
            "needs a key",
        ),
        (lambda: formats.convert(np.ones(2, np.int32), "e4m3"), TypeError, "got int32"),
    ],
)
def test_bad_formats_and_roundings_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    "spec", ["e2m1", "e3m2", "e4m3", "e5m2", "e5m10", "e8m7", "e8m10", "e6m1", "e7m23"]
)
def test_nearest_by_bits_equals_the_general_rule(spec):
    """The few-operation nearest-even rounding (integer rounding of the bits,
    a float addition below the smallest normal) equals the general rule on
    float32 bit patterns of every exponent: each pattern of the upper 20 bits
    (every 5th) with low bits at, around and away from a tie."""
    from approxjax._src.arithmetic import formats as impl

    fmt = formats.get(spec)
    assert impl._nearest_by_bits(fmt)
    hi = np.arange(0, 0x7F800000 >> 12, 5, dtype=np.uint32) << 12
    lows = np.array([0, 1, 0x7FF, 0x800, 0x801, 0xFFF, 0x3A5], np.uint32)
    pattern = (hi[:, None] | lows[None, :]).ravel()
    fast = jax.jit(lambda b: impl._nearest_magnitude(b, fmt))(pattern)
    general = jax.jit(lambda b: impl._rounded_magnitude(b, fmt, "nearest_even", None))(pattern)
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(general))
