"""Single products, bit for bit: the kernels against reference.py, every rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import bits

import approxjax as ax
from approxjax import reference as ref

MANTISSA_BITS = [0, 1, 7, 10]

SPECIAL = np.array(
    [
        0.0,
        -0.0,
        1e-40,  # subnormal
        -3e-42,  # subnormal
        np.finfo(np.float32).tiny,  # smallest normal
        -np.finfo(np.float32).tiny,
        np.finfo(np.float32).max,
        -np.finfo(np.float32).max,
        np.inf,
        -np.inf,
        np.nan,
        1.0,
        -1.0,
        1.5,
        -1.9999999,
        3.0,
        2.0**100,  # products overflow
        -(2.0**90) * 1.75,
        2.0**-70,  # products underflow
        -(2.0**-65) * 1.25,
        2.0**63,  # edge of the regular exponent range
        2.0**-63,
        2.0**64,
        2.0**-64,
        0.1,
        -7.3,
    ],
    dtype=np.float32,
)


def _random_table(rng, m):
    """A table exercising zero entries, tiny and large entries, and carries."""
    side = 1 << m
    t = rng.uniform(0.5, 4.0, (side, side)).astype(np.float32)
    if side > 1:
        t[0, -1] = 0.0
        t[-1, 0] = 2.0**-30
        t[side // 2, side // 3] = 2.0**40
    return ax.Multiplier(t, name=f"random{m}")


def _tables(m, rng):
    return [ax.truncated(m), _random_table(rng, m)]


@pytest.mark.parametrize("m", MANTISSA_BITS)
def test_multiply_special_values(m, rng):
    a, b = np.meshgrid(SPECIAL, SPECIAL, indexing="ij")
    for mult in _tables(m, rng):
        got = ax.multiply(a, b, mult)
        want = ref.multiply(a, b, mult.lut)
        np.testing.assert_array_equal(bits(got), bits(want), err_msg=mult.name)


@pytest.mark.parametrize("m", MANTISSA_BITS)
def test_k1_dot_general_special_values(m, rng):
    """K = 1 GEMMs are single products: the GEMM kernel's fast and slow paths."""
    lhs = SPECIAL[:, None]
    rhs = SPECIAL[None, :]
    a, b = np.meshgrid(SPECIAL, SPECIAL, indexing="ij")
    dn = (((1,), (0,)), ((), ()))
    for mult in _tables(m, rng):
        got = ax.dot_general(lhs, rhs, dn, multiplier=mult)
        want = ref.multiply(a, b, mult.lut)
        np.testing.assert_array_equal(bits(got), bits(want), err_msg=mult.name)


@pytest.mark.parametrize("m", MANTISSA_BITS)
def test_random_bit_patterns(m, rng):
    """Any float32 bit patterns (every class of value), both kernels."""
    n = 4096
    a = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    b = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    mult = _random_table(rng, m)
    want = ref.multiply(a, b, mult.lut)
    np.testing.assert_array_equal(bits(ax.multiply(a, b, mult)), bits(want))
    k1 = jax.vmap(
        lambda x, y: ax.dot_general(
            x[None, None], y[None, None], (((1,), (0,)), ((), ())), multiplier=mult
        )[0, 0]
    )
    np.testing.assert_array_equal(bits(k1(a[:512], b[:512])), bits(want[:512]))


def test_rules_by_example():
    """The documented rules, checked on hand-computed values."""
    mult = ax.truncated(7)
    cases = [
        (1.5, 2.5, 3.75),  # (1.5 * 1.25) * 2**1 exact
        (-1.5, 2.5, -3.75),
        (0.0, -2.0, -0.0),  # zero gives a signed zero
        (-0.0, -2.0, 0.0),
        (1e-40, 5.0, 0.0),  # subnormal operands are flushed
        (-1e-40, 5.0, -0.0),
        (np.inf, 2.0, np.inf),
        (np.inf, -2.0, -np.inf),
        (2.0**100, 2.0**100, np.inf),  # overflow
        (-(2.0**100), 2.0**100, -np.inf),
        (2.0**-70, 2.0**-70, 0.0),  # below the smallest normal
        (-(2.0**-70), 2.0**-70, -0.0),
        (1.0 + 2.0**-8, 1.0, 1.0),  # fraction bits below the top m are truncated
    ]
    a = np.array([c[0] for c in cases], np.float32)
    b = np.array([c[1] for c in cases], np.float32)
    want = np.array([c[2] for c in cases], np.float32)
    np.testing.assert_array_equal(bits(ax.multiply(a, b, mult)), bits(want))
    np.testing.assert_array_equal(bits(ref.multiply(a, b, mult.lut)), bits(want))
    nan_cases = ax.multiply(
        np.array([np.inf, 0.0, np.nan, 1.0], np.float32),
        np.array([0.0, -np.inf, 1.0, np.nan], np.float32),
        mult,
    )
    assert np.isnan(np.asarray(nan_cases)).all()


def test_zero_table_entry_gives_signed_zero():
    lut = np.ones((2, 2), np.float32)
    lut[1, 1] = 0.0
    mult = ax.Multiplier(lut)
    got = ax.multiply(np.float32([-1.5, 1.5]), np.float32([1.5, 1.5]), mult)
    np.testing.assert_array_equal(bits(got), bits(np.float32([-0.0, 0.0])))


def test_subnormal_table_entries_are_exact():
    lut = np.full((2, 2), 2.0**-140, np.float32)  # subnormal entries
    mult = ax.Multiplier(lut)
    a = np.float32([2.0**70, 2.0**10, 2.0**-10])
    b = np.float32([2.0**70, 2.0**3, 2.0**5])
    want = ref.multiply(a, b, mult.lut)
    np.testing.assert_array_equal(bits(want), bits(np.float32([2.0**0, 0.0, 0.0])))
    np.testing.assert_array_equal(bits(ax.multiply(a, b, mult)), bits(want))
    k1 = ax.dot_general(a[:, None], b[None, :], (((1,), (0,)), ((), ())), multiplier=mult)
    np.testing.assert_array_equal(bits(np.diag(np.asarray(k1))), bits(want))


@pytest.mark.parametrize("m", [3, 7, 11])
def test_truncated_matches_float32_product_of_truncated_operands(m, rng):
    a = (rng.uniform(0.5, 8, 2000) * rng.choice([-1, 1], 2000)).astype(np.float32)
    b = (rng.uniform(0.5, 8, 2000) * rng.choice([-1, 1], 2000)).astype(np.float32)
    mask = np.uint32((0xFFFFFFFF << (23 - m)) & 0xFFFFFFFF)
    ta = (a.view(np.uint32) & mask).view(np.float32)
    tb = (b.view(np.uint32) & mask).view(np.float32)
    np.testing.assert_array_equal(bits(ax.multiply(a, b, ax.truncated(m))), bits(ta * tb))


def test_low_precision_operands_convert_exactly(rng):
    mult = ax.truncated(7)
    a = jnp.asarray(rng.standard_normal(64), jnp.bfloat16)
    b = jnp.asarray(rng.standard_normal(64), jnp.float16)
    got = ax.multiply(a, b, mult)
    assert got.dtype == jnp.float32
    want = ref.multiply(a.astype(jnp.float32), b.astype(jnp.float32), mult.lut)
    np.testing.assert_array_equal(bits(got), bits(want))
    same = ax.multiply(a, a, mult)
    assert same.dtype == jnp.bfloat16
