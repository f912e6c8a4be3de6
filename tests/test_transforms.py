"""Gradients, vmap and jit of approxjax.dot_general and multiply."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import bits, random_nonzero
from jax import lax

import approxjax as ax
from approxjax import reference as ref

DN = (((1,), (0,)), ((), ()))


def _ref_bmm_factory(fwd_lut, ig_lut, wg_lut):
    """An independent statement of the approximate-backward rule, on the reference."""

    def bmm(lut, a, b):
        if lut is None:
            return jnp.einsum("gmk,gkn->gmn", a, b, precision=lax.Precision.HIGHEST)
        return ref.dot_general(a, b, (((2,), (1,)), ((0,), (0,))), lut)

    @jax.custom_vjp
    def f(a, b):
        return bmm(fwd_lut, a, b)

    def fwd(a, b):
        return f(a, b), (a, b)

    def bwd(res, g):
        a, b = res
        return bmm(ig_lut, g, jnp.swapaxes(b, 1, 2)), bmm(wg_lut, jnp.swapaxes(a, 1, 2), g)

    f.defvjp(fwd, bwd)
    return f


def _ref_dot_general(lhs, rhs, dn, fwd_lut, ig_lut, wg_lut):
    """Reference dot_general: canonicalise (linear, exact), reference bmm, reshape."""
    a, b, shape = ref.canonical(lhs, rhs, dn)
    return _ref_bmm_factory(fwd_lut, ig_lut, wg_lut)(a, b).reshape(shape)


@pytest.mark.parametrize(
    "lhs_shape,rhs_shape,dn",
    [
        ((6, 5), (5, 4), DN),
        ((5, 6), (4, 5), (((0,), (1,)), ((), ()))),
        ((3, 4, 5), (3, 5, 2), (((2,), (1,)), ((0,), (0,)))),
        ((2, 3, 4, 5), (5, 4, 2, 6), (((2, 3), (1, 0)), ((0,), (2,)))),
    ],
)
def test_gradients_follow_the_approximate_backward_rule(lhs_shape, rhs_shape, dn, rng):
    lhs = random_nonzero(rng, lhs_shape)
    rhs = random_nonzero(rng, rhs_shape)
    fwd, other = ax.truncated(7), ax.truncated(3)
    cases = [
        ("forward", "forward", fwd.lut, fwd.lut),
        (None, other, None, other.lut),
        (other, None, other.lut, None),
    ]
    for ig, wg, ig_lut, wg_lut in cases:
        out, vjp = jax.vjp(
            lambda a, b, ig=ig, wg=wg: ax.dot_general(
                a, b, dn, multiplier=fwd, input_grad_multiplier=ig, weight_grad_multiplier=wg
            ),
            lhs,
            rhs,
        )
        g = random_nonzero(rng, out.shape)
        want_out, want_vjp = jax.vjp(
            lambda a, b, il=ig_lut, wl=wg_lut: _ref_dot_general(a, b, dn, fwd.lut, il, wl), lhs, rhs
        )
        for got, want, x in zip(vjp(g), want_vjp(g), (lhs, rhs), strict=True):
            assert got.shape == x.shape
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(out, want_out, rtol=2e-6, atol=2e-6)


def test_gradients_are_bit_exact_sequential_gemms(rng):
    lhs = random_nonzero(rng, (40, 30))
    rhs = random_nonzero(rng, (30, 20))
    g = random_nonzero(rng, (40, 20))
    mult = ax.truncated(5)
    _, vjp = jax.vjp(lambda a, b: ax.dot_general(a, b, DN, multiplier=mult), lhs, rhs)
    da, db = vjp(g)
    want_da = ref.sequential_dot_general(g, rhs, (((1,), (1,)), ((), ())), mult.lut)
    want_db = ref.sequential_dot_general(lhs, g, (((0,), (0,)), ((), ())), mult.lut)
    np.testing.assert_array_equal(bits(da), bits(want_da))
    np.testing.assert_array_equal(bits(db), bits(want_db))


def test_exact_gradients_are_xla_dots(rng):
    lhs = random_nonzero(rng, (7, 9))
    rhs = random_nonzero(rng, (9, 4))
    g = random_nonzero(rng, (7, 4))
    _, vjp = jax.vjp(
        lambda a, b: ax.dot_general(
            a,
            b,
            DN,
            multiplier=ax.truncated(2),
            input_grad_multiplier=None,
            weight_grad_multiplier=None,
        ),
        lhs,
        rhs,
    )
    da, db = vjp(g)
    hi = lax.Precision.HIGHEST
    np.testing.assert_allclose(da, jnp.dot(g, rhs.T, precision=hi), rtol=1e-6)
    np.testing.assert_allclose(db, jnp.dot(lhs.T, g, precision=hi), rtol=1e-6)


def test_multiply_gradient(rng):
    a = random_nonzero(rng, (5, 3))
    b = random_nonzero(rng, (3,))
    mult = ax.truncated(4)
    out, vjp = jax.vjp(lambda x, y: ax.multiply(x, y, mult), a, b)
    g = random_nonzero(rng, out.shape)
    da, db = vjp(g)
    np.testing.assert_array_equal(bits(da), bits(ref.multiply(g, b, mult.lut)))
    want_db = np.sum(np.asarray(ref.multiply(a, g, mult.lut)), axis=0)
    np.testing.assert_allclose(db, want_db, rtol=1e-6)


def _stack3():
    return ax.stack(
        [
            ax.truncated(6),
            ax.Multiplier(np.full((64, 64), 1.5, np.float32), "flat"),
            ax.truncated(6),
        ]
    )


def test_vmap_over_multipliers_equals_a_loop(rng):
    lhs = random_nonzero(rng, (33, 20))
    rhs = random_nonzero(rng, (20, 17))
    stack = _stack3()
    got = jax.jit(jax.vmap(lambda mu: ax.dot_general(lhs, rhs, DN, multiplier=mu)))(stack)
    for i in range(3):
        want = ax.dot_general(lhs, rhs, DN, multiplier=stack[i])
        np.testing.assert_array_equal(bits(got[i]), bits(want))
        np.testing.assert_array_equal(
            bits(got[i]), bits(ref.sequential_dot_general(lhs, rhs, DN, stack[i].lut))
        )


def test_vmap_over_multipliers_is_one_call_without_copies(rng):
    lhs = random_nonzero(rng, (32, 20))
    rhs = random_nonzero(rng, (20, 16))
    stack = _stack3()
    fn = jax.jit(jax.vmap(lambda mu: ax.dot_general(lhs, rhs, DN, multiplier=mu)))
    hlo = fn.lower(stack).as_text()
    calls = [line for line in hlo.splitlines() if "approxjax_gemm" in line and "call" in line]
    assert len(calls) == 1, calls
    assert "tensor<1x1x32x20xf32>" in calls[0], calls[0]  # lhs not copied 3 times
    assert "tensor<3x1x64x64xf32>" in calls[0], calls[0]


def test_vmap_over_operands_nested_and_mixed(rng):
    mult = ax.truncated(7)
    x = random_nonzero(rng, (4, 3, 6, 5))
    w = random_nonzero(rng, (5, 2))
    f = lambda a, b: ax.dot_general(a, b, DN, multiplier=mult)  # noqa: E731
    got = jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(0, None))(x, w)
    for i in range(4):
        for j in range(3):
            np.testing.assert_array_equal(bits(got[i, j]), bits(f(x[i, j], w)))
    stack = _stack3()
    ws = random_nonzero(rng, (3, 5, 2))
    got = jax.vmap(lambda mu, b: ax.dot_general(x[0, 0], b, DN, multiplier=mu))(stack, ws)
    for i in range(3):
        want = ax.dot_general(x[0, 0], ws[i], DN, multiplier=stack[i])
        np.testing.assert_array_equal(bits(got[i]), bits(want))


def _loss(mult, a, b):
    return jnp.sum(jnp.tanh(ax.dot_general(a, b, DN, multiplier=mult)))


def test_vmap_of_grad_and_grad_of_vmap(rng):
    a = random_nonzero(rng, (3, 8, 6))
    b = random_nonzero(rng, (6, 4))
    mult = ax.truncated(7)
    per_example = jax.vmap(jax.grad(partial(_loss, mult), argnums=(0, 1)), in_axes=(0, None))(a, b)
    for i in range(3):
        ga, gb = jax.grad(partial(_loss, mult), argnums=(0, 1))(a[i], b)
        np.testing.assert_array_equal(bits(per_example[0][i]), bits(ga))
        np.testing.assert_array_equal(bits(per_example[1][i]), bits(gb))
    total = jax.grad(lambda b: jnp.sum(jax.vmap(partial(_loss, mult), (0, None))(a, b)))(b)
    loop = sum(jax.grad(partial(_loss, mult), argnums=1)(a[i], b) for i in range(3))
    np.testing.assert_allclose(total, loop, rtol=1e-6, atol=1e-6)
    stack = _stack3()
    grads = jax.jit(jax.vmap(jax.grad(_loss, argnums=2), in_axes=(0, None, None)))(stack, a[0], b)
    for i in range(3):
        np.testing.assert_array_equal(
            bits(grads[i]), bits(jax.grad(_loss, argnums=2)(stack[i], a[0], b))
        )


def test_jit_equals_eager(rng):
    a = random_nonzero(rng, (3, 9, 7))
    b = random_nonzero(rng, (3, 7, 5))
    dn = (((2,), (1,)), ((0,), (0,)))
    mult = ax.truncated(7)
    eager = ax.dot_general(a, b, dn, multiplier=mult)
    jitted = jax.jit(lambda a, b, mu: ax.dot_general(a, b, dn, multiplier=mu))(a, b, mult)
    np.testing.assert_array_equal(bits(eager), bits(jitted))


def test_multiplier_is_a_pytree_passed_as_data(rng):
    a = random_nonzero(rng, (4, 4))
    traces = []  # one entry per trace: jit traces once per distinct (shape, treedef)

    def fn(mu):
        traces.append(mu.name)
        return ax.dot_general(a, a, DN, multiplier=mu)

    f = jax.jit(fn)
    one = f(ax.truncated(4))
    other = f(ax.Multiplier(np.ones((16, 16), np.float32), name="truncated4"))
    assert traces == ["truncated4"]  # same m and name: one program, the table is data
    assert not np.array_equal(np.asarray(one), np.asarray(other))
    f(ax.mitchell(4))  # another name: its own program, so reports name it right
    assert traces == ["truncated4", "mitchell4"]
    leaves, treedef = jax.tree_util.tree_flatten(ax.truncated(4))
    facts = ax.truncated(4).facts.shape[0]
    # The table, its facts and its exact rank-1 factors (u, v) travel with it.
    assert [x.shape for x in leaves] == [(16, 16), (facts,), (1, 16), (1, 16)]
    assert leaves[1].dtype == np.uint32
    assert jax.tree_util.tree_unflatten(treedef, leaves).name == "truncated4"


def test_transposed_layouts_reach_the_kernel_and_keep_operand_order(rng):
    """lhs stored (K, M) and rhs stored (N, K) go to the kernel as they are
    (no transpose in the HLO); forward and both gradients keep each product's
    operand order, which matters for an asymmetric multiplier."""
    lut = np.asarray(ax.mitchell(5).lut, np.float32)
    lut = lut * (1 + np.arange(32, dtype=np.float32)[:, None] / 64)  # asymmetric
    mult = ax.Multiplier(lut)
    lhs = random_nonzero(rng, (30, 40))  # (K, M)
    rhs = random_nonzero(rng, (20, 30))  # (N, K)
    dn = (((0,), (1,)), ((), ()))
    fn = jax.jit(lambda a, b: ax.dot_general(a, b, dn, multiplier=mult))
    assert " transpose(" not in fn.lower(lhs, rhs).compile().as_text()
    out, vjp = jax.vjp(fn, lhs, rhs)
    g = random_nonzero(rng, out.shape)  # (M, N)
    da, db = vjp(g)
    seq = ref.sequential_dot_general
    np.testing.assert_array_equal(bits(out), bits(seq(lhs, rhs, dn, mult.lut)))
    want_da = seq(g, rhs, (((1,), (0,)), ((), ())), mult.lut).T  # sum_n g[m,n] * B[k,n]
    want_db = seq(lhs, g, (((1,), (0,)), ((), ())), mult.lut).T  # sum_m A[m,k] * g[m,n]
    np.testing.assert_array_equal(bits(da), bits(want_da))
    np.testing.assert_array_equal(bits(db), bits(want_db))
