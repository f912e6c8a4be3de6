"""The native path (method="native"/"auto"): low-rank multipliers as XLA dots
and convolutions, against the reference within native_bound; specials as the
table's rule; gradients, vmap, jit, policies; surrogates; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import dot_problems, random_nonzero
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import approxjax as ax
from approxjax import reference as ref

DN = (((1,), (0,)), ((), ()))


def _low_rank_multipliers():
    return [
        ax.lowblock(7, 3),
        ax.lowblock(5, 5),
        ax.drum(6, 3),
        ax.truncated(12),
        ax.surrogate(ax.mitchell(5), rank=3),
    ]


def _within(got, lhs, rhs, dn, mult):
    want = np.asarray(ref.dot_general(lhs, rhs, dn, mult.lut), np.float64)
    bound = ref.native_bound(lhs, rhs, dn, mult)
    diff = np.abs(np.asarray(got, np.float64) - want)
    assert np.all(diff <= bound), (diff.max(), bound[diff > bound])


def _lowered(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


@pytest.mark.parametrize(
    "mult,rank",
    [
        (ax.truncated(3), 1),
        (ax.truncated(11), 1),
        (ax.drum(9, 3), 1),
        (ax.lowblock(7, 3), 2),
        (ax.lowblock(6, 0), 1),
        (ax.lowblock(12, 6), 2),
    ],
    ids=lambda x: getattr(x, "name", str(x)),
)
def test_catalog_designs_carry_exact_factors(mult, rank):
    assert mult.rank == rank
    u, v = (np.asarray(f, np.float64) for f in mult.factors)
    lut = np.asarray(mult.lut, np.float64)
    # Exact float32 factors: their products reproduce the table to its own rounding.
    tol = 0 if mult.mantissa_bits <= 11 else 2.0**-24
    assert np.all(np.abs(u.T @ v - lut) <= tol * lut)
    assert np.all(u[0] > 0) and np.all(v[0] > 0)
    if mult.mantissa_bits <= 9:
        assert ax.decompose(mult).rank == rank


def test_lowblock_formula_and_error():
    m, k = 6, 3
    i = np.arange(1 << m)
    x = 1 + i / 2**m
    low = (i % 2**k) / 2**m
    want = np.outer(x, x) - np.outer(low, low)
    np.testing.assert_array_equal(np.asarray(ax.lowblock(m, k).lut), want.astype(np.float32))
    assert np.all(want <= np.outer(x, x))  # never above the exact product
    assert ax.get("lowblock6:k=3").name == "lowblock6:k=3"
    np.testing.assert_array_equal(ax.lowblock(4, 0).lut, ax.truncated(4).lut)


def test_tables_found_low_rank_when_made():
    x = ax.significands(4)
    lut = np.outer(x, x) + 2.0**-5 * np.outer(x * x, np.ones_like(x))  # rank 2
    mult = ax.Multiplier(lut.astype(np.float32), name="made")
    assert mult.rank == 2
    assert ax.mitchell(7).rank is None and ax.mitchell(7).factors is None
    assert ax.mitchell(10).rank is None  # above m = 8: on request only
    big = ax.Multiplier(np.asarray(ax.truncated(10).lut))  # a table, no catalog factors
    assert big.rank is None and big.factored().rank == 1


@settings(max_examples=20, deadline=None)
@given(
    problem=dot_problems(),
    which=st.integers(0, 4),
    seed=st.integers(0, 2**31),
)
def test_native_dot_general_within_bound(problem, which, seed):
    lhs_shape, rhs_shape, dn = problem
    rng = np.random.default_rng(seed)
    lhs = random_nonzero(rng, lhs_shape)
    rhs = random_nonzero(rng, rhs_shape)
    mult = _MULTS[which]
    got = ax.dot_general(lhs, rhs, dn, multiplier=mult, method="native")
    assert got.shape == lax.dot_general(lhs, rhs, dn).shape
    _within(got, lhs, rhs, dn, mult)


_MULTS = _low_rank_multipliers()


def test_large_gemm_within_bound(rng):
    lhs = random_nonzero(rng, (200, 700))
    rhs = random_nonzero(rng, (700, 90))
    for mult in (ax.lowblock(7, 4), ax.surrogate(ax.mbm(7), rank=2)):
        got = jax.jit(lambda a, b, m=mult: ax.dot_general(a, b, DN, multiplier=m, method="native"))
        _within(got(lhs, rhs), lhs, rhs, DN, mult)


def test_specials_follow_the_tables_rule(rng):
    """NaN, inf times a normal / zero / subnormal / inf, zeros and subnormals:
    the same NaN and inf pattern (and signs) as the LUT kernel; the finite
    outputs within the bound."""
    mult = ax.lowblock(7, 3)
    lhs = random_nonzero(rng, (12, 9))
    rhs = random_nonzero(rng, (9, 10))
    lhs[0, 2], lhs[1, 3], lhs[2, 4] = np.inf, -np.inf, np.nan
    lhs[3, :] = 0.0
    lhs[4, 1] = 1e-41  # subnormal: flushed
    rhs[2, 5] = 0.0  # inf * 0 -> NaN
    rhs[3, 6] = -1e-40  # -inf * subnormal -> NaN
    rhs[4, 7] = np.inf
    rhs[1, 8] = -np.inf  # with lhs[4, 1] subnormal: NaN
    rhs[6, 9] = -np.inf  # inf in column 9 meets lhs[0, 6] finite: -inf
    lut_out = np.asarray(ax.dot_general(lhs, rhs, DN, multiplier=mult, method="lut"))
    nat_out = np.asarray(ax.dot_general(lhs, rhs, DN, multiplier=mult, method="native"))
    np.testing.assert_array_equal(np.isnan(nat_out), np.isnan(lut_out))
    np.testing.assert_array_equal(np.isposinf(nat_out), np.isposinf(lut_out))
    np.testing.assert_array_equal(np.isneginf(nat_out), np.isneginf(lut_out))
    assert np.isnan(lut_out).any() and np.isinf(lut_out).any()
    finite = np.isfinite(lut_out)
    clean_l = np.where(np.isfinite(lhs), lhs, 0).astype(np.float32)
    clean_r = np.where(np.isfinite(rhs), rhs, 0).astype(np.float32)
    bound = ref.native_bound(clean_l, clean_r, DN, mult)
    assert np.all(np.abs(nat_out[finite] - lut_out[finite]) <= bound[finite])


def test_gradients_follow_the_lut_rules(rng):
    """d lhs = g @ rhs^T and d rhs = lhs^T @ g under the multiplier (g the lhs
    of the first, lhs the lhs of the second), natively too."""
    mult = ax.lowblock(7, 3)
    lhs = random_nonzero(rng, (20, 30))
    rhs = random_nonzero(rng, (30, 16))
    g = random_nonzero(rng, (20, 16))

    def grads(method):
        fn = lambda a, b: ax.dot_general(a, b, DN, multiplier=mult, method=method)  # noqa: E731
        return jax.vjp(fn, lhs, rhs)[1](g)

    (da, db) = grads("native")
    _within(da, g, rhs.T, DN, mult)
    _within(db, lhs.T, g, DN, mult)
    (la, lb) = grads("lut")
    assert np.max(np.abs(np.asarray(da) - la)) < 1e-4 * np.abs(la).max()
    # The exact gradient differs by far more: the products are approximate.
    exact = jax.vjp(lambda a, b: a @ b, lhs, rhs)[1](g)
    assert np.max(np.abs(np.asarray(exact[0]) - la)) > 1e-3 * np.abs(la).max()


def test_vmap_over_a_stack_pads_ranks(rng):
    mults = [ax.lowblock(7, 3), ax.truncated(7), ax.surrogate(ax.mitchell(7), rank=3)]
    stack = ax.stack(mults)
    assert stack.rank == 3
    lhs = random_nonzero(rng, (24, 40))
    rhs = random_nonzero(rng, (40, 8))
    out = jax.jit(jax.vmap(lambda m: ax.dot_general(lhs, rhs, DN, multiplier=m, method="native")))(
        stack
    )
    for i, mult in enumerate(mults):
        _within(out[i], lhs, rhs, DN, mult)
    # A stack with a factorless member has no factors: native refuses it.
    mixed = ax.stack([ax.lowblock(7, 3), ax.mitchell(7)])
    assert mixed.factors is None
    with pytest.raises(ValueError, match="has no factors"):
        jax.vmap(lambda m: ax.dot_general(lhs, rhs, DN, multiplier=m, method="native"))(mixed)


def test_auto_chooses_by_rank_and_arithmetic(rng):
    """On the CPU: rank 2 at m = 7 natively (no custom call); rank 1 through
    the kernel's separable path; factorless tables and rounded sums by the kernel."""
    lhs = random_nonzero(rng, (16, 16))
    rhs = random_nonzero(rng, (16, 16))

    def kernel_called(value, method=None):
        text = _lowered(
            lambda a, b: ax.dot_general(a, b, DN, multiplier=value, method=method), lhs, rhs
        )
        return "approxjax_gemm" in text

    assert not kernel_called(ax.lowblock(7, 3))
    assert kernel_called(ax.lowblock(7, 3), "lut")
    assert kernel_called(ax.truncated(7))
    assert not kernel_called(ax.truncated(7), "native")
    assert kernel_called(ax.mitchell(7))
    rounded = ax.Arithmetic(multiplier=ax.lowblock(7, 3), accumulator="bfloat16")
    assert kernel_called(rounded)
    assert not kernel_called(ax.Arithmetic(multiplier=ax.lowblock(3, 1), lhs="e4m3"))
    assert kernel_called(ax.Arithmetic(multiplier=ax.lowblock(7, 3), method="lut"))
    assert ax.Arithmetic(multiplier=ax.lowblock(7, 3), method="lut").name == "lowblock7:k=3[lut]"


def test_operand_formats_natively(rng):
    """Operands converted to their formats first, then the transformed GEMM."""
    mult = ax.lowblock(3, 1)
    arith = ax.Arithmetic(multiplier=mult, lhs="e4m3", rhs="bfloat16")
    lhs = random_nonzero(rng, (10, 33))
    rhs = random_nonzero(rng, (33, 7))
    got = ax.dot_general(lhs, rhs, DN, multiplier=arith, method="native")
    cl = np.asarray(ax.formats.convert(lhs, "e4m3"))
    cr = np.asarray(ax.formats.convert(rhs, "bfloat16"))
    _within(got, cl, cr, DN, mult)


def test_native_convolution_and_its_gradients(rng):
    mult = ax.lowblock(7, 3)
    x = random_nonzero(rng, (2, 3, 9, 8))  # NCHW
    w = random_nonzero(rng, (4, 3, 3, 2))  # OIHW
    g = random_nonzero(rng, (2, 4, 5, 8))

    def conv(method):
        def fn(x, w):
            return ax.conv_general_dilated(x, w, (2, 1), "SAME", multiplier=mult, method=method)

        return fn

    y, vjp = jax.vjp(conv("native"), x, w)
    # The forward pass as a GEMM of patches, against the reference and bound.
    patches = lax.conv_general_dilated_patches(x, (3, 2), (2, 1), "SAME")  # (N, C*kh*kw, H', W')
    a = np.moveaxis(np.asarray(patches), 1, -1).reshape(-1, 18)
    b = w.reshape(4, 18).T
    flat = np.moveaxis(np.asarray(y), 1, -1).reshape(-1, 4)
    _within(flat, a, b, DN, mult)
    assert "approxjax" not in _lowered(conv("native"), x, w)
    y_lut, vjp_lut = jax.vjp(conv("lut"), x, w)
    for got, want in zip(vjp(g), vjp_lut(g), strict=True):
        scale = np.abs(np.asarray(want)).max()
        assert np.max(np.abs(np.asarray(got) - want)) < 1e-4 * scale
    exact = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, (2, 1), "SAME"), x, w)[1](g)
    assert np.max(np.abs(np.asarray(exact[1]) - vjp_lut(g)[1])) > 1e-3 * np.abs(exact[1]).max()


def test_flax_layers_and_policies_set_the_method(rng):
    x = random_nonzero(rng, (4, 12))
    mult = ax.lowblock(7, 3)
    dense = ax.Dense(5, multiplier=mult, method="lut")
    params = dense.init(jax.random.key(0), x)
    assert "approxjax_gemm" in _lowered(lambda p, x: dense.apply(p, x), params, x)
    native = ax.Dense(5, multiplier=mult, method="native")
    assert "approxjax_gemm" not in _lowered(lambda p, x: native.apply(p, x), params, x)
    # A policy: one layer natively, the other by the table.
    from flax import linen as nn

    class Two(nn.Module):
        @nn.compact
        def __call__(self, x):
            return ax.Dense(3, name="b")(ax.Dense(6, name="a")(x))

    model = Two()
    p = model.init(jax.random.key(1), x)

    def calls(policy):
        def run(p, x):
            with ax.using(policy):
                return model.apply(p, x)

        return _lowered(run, p, x).count("approxjax_gemm")

    lut = ax.Arithmetic(multiplier=mult, method="lut")
    mixed = ax.Policy(rules=[("b", lut), ("a", ax.Arithmetic(multiplier=mult, method="native"))])
    assert 0 < calls(mixed) < calls(ax.Policy(lut))
    fwd_native = ax.approximate(lambda p, x: model.apply(p, x), mult, method="native")
    assert "approxjax_gemm" not in _lowered(fwd_native, p, x)


def test_surrogate_residual_matches_numpy():
    mult = ax.mitchell(6)
    s = ax.surrogate(mult, rank=2)
    assert s.name == "mitchell6~r2" and s.rank == 2
    res = s.metadata["surrogate"]
    lut = np.asarray(mult.lut, np.float64)
    table = np.asarray(s.lut, np.float64)
    rel = np.abs(table - lut) / lut
    assert res["max_relative"] == pytest.approx(rel.max(), rel=1e-12)
    assert res["mean_relative"] == pytest.approx(rel.mean(), rel=1e-12)
    x = ax.significands(6)
    own = np.mean(np.abs(lut - np.outer(x, x)) / np.outer(x, x))
    assert res["own_error"] == pytest.approx(own, rel=1e-12)
    # The same residual decompose reports for rank 2 (float32 factors aside).
    d = ax.decompose(mult, max_rank=2)
    assert res["mean_relative"] == pytest.approx(d.residuals[1].mean_relative, rel=1e-3)
    # Never silent: the original runs by its table under "auto".
    a = np.ones((4, 4), np.float32)
    assert "approxjax_gemm" in _lowered(lambda a: ax.dot_general(a, a, DN, multiplier=mult), a)


def test_forcing_native_names_the_rank_found(rng):
    a = random_nonzero(rng, (4, 4))
    with pytest.raises(ValueError, match="mitchell7 has no exact decomposition of rank <= 16"):
        ax.dot_general(a, a, DN, multiplier=ax.mitchell(7), method="native")
    x = ax.significands(4)
    factors = np.random.default_rng(1).integers(1, 9, (2, 6, 16)).astype(np.float64)
    six = ax.Multiplier((factors[0].T @ factors[1] / 64).astype(np.float32), name="six")
    with pytest.raises(ValueError, match=r"six has exact rank 6 > 4.*factored\(max_rank=6\)"):
        ax.dot_general(a, a, DN, multiplier=six, method="native")
    _within(ax.dot_general(a, a, DN, multiplier=six.factored(6), method="native"), a, a, DN,
            six.factored(6))  # fmt: skip
    with pytest.raises(ValueError, match="no exact decomposition of rank <= 3"):
        six.factored(3)
    with pytest.raises(ValueError, match="cannot simulate product rounding, an accumulator"):
        arith = ax.Arithmetic(multiplier=ax.lowblock(7, 3), accumulator="bfloat16")
        ax.dot_general(a, a, DN, multiplier=arith, method="native")
    with pytest.raises(ValueError, match="method must be 'auto', 'lut' or 'native'; got 'fast'"):
        ax.dot_general(a, a, DN, multiplier=ax.lowblock(7, 3), method="fast")
    with pytest.raises(ValueError, match=r"Arithmetic\(method=...\) must be"):
        ax.Arithmetic(multiplier=ax.lowblock(7, 3), method="gpu")
    with pytest.raises(ValueError, match="the factors do not reproduce the table"):
        ax.Multiplier(np.asarray(ax.mitchell(4).lut), factors=(x[None], x[None]))
    with pytest.raises(ValueError, match="first pair of factors must be positive"):
        ax.Multiplier(np.outer(x, x).astype(np.float32), factors=(-x[None], -x[None]))
    with pytest.raises(ValueError, match="rank must be an integer from 1 to 16; got 0"):
        ax.surrogate(ax.mitchell(4), rank=0)
    conv_x = random_nonzero(rng, (1, 2, 5, 5))
    conv_w = random_nonzero(rng, (2, 2, 3, 3))
    with pytest.raises(ValueError, match="all three of its GEMMs"):
        ax.conv_general_dilated(
            conv_x,
            conv_w,
            (1, 1),
            "SAME",
            multiplier=ax.Arithmetic(multiplier=ax.lowblock(7, 3), method="native"),
            weight_grad_multiplier=ax.mitchell(7),
        )


def test_jit_keys_on_the_method(rng):
    mult = ax.lowblock(7, 3)
    a = jnp.asarray(random_nonzero(rng, (8, 8)))
    traces = []

    @jax.jit
    def run(a, m):
        traces.append(1)
        return ax.dot_general(a, a, DN, multiplier=m, method="native")

    run(a, mult)
    run(a, ax.lowblock(7, 3))  # same name, rank and shapes: no retrace
    assert len(traces) == 1
