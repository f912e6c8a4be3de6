"""approximate(fn): control flow with traced multipliers, models nobody here
wrote (Equinox, Flax NNX), per-layer policies, products it leaves exact."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import bits, random_nonzero
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import approxjax as ax

DN = (((1,), (0,)), ((), ()))


def _programs():
    """Functions whose dots sit inside each kind of sub-program."""

    def scan(w, x):
        def body(c, xi):
            return jnp.tanh(c @ w), xi @ w

        c, ys = jax.lax.scan(body, x, jnp.stack([x, 2 * x]))
        return c + ys.sum(0)

    def while_loop(w, x):
        def body(carry):
            i, c = carry
            return i + 1, jnp.tanh(c @ w)

        return jax.lax.while_loop(lambda carry: carry[0] < 3, body, (0, x))[1]

    def cond(w, x):
        return jax.lax.cond(x[0, 0] > -10, lambda c: c @ w, lambda c: c @ (2 * w), x)

    def remat(w, x):
        return jax.checkpoint(lambda c: jnp.tanh(c @ w) @ w)(x)

    def shard_map(w, x):
        mesh = jax.make_mesh((1,), ("d",), axis_types=(AxisType.Explicit,))
        x = jax.sharding.reshard(x, jax.NamedSharding(mesh, P("d")))
        f = jax.shard_map(lambda c, w: c @ w, mesh=mesh, in_specs=(P("d"), P()), out_specs=P("d"))
        return f(x, w)

    return {"scan": scan, "while": while_loop, "cond": cond, "remat": remat, "shard_map": shard_map}


@pytest.mark.parametrize("kind", sorted(_programs()))
def test_traced_multipliers_through_control_flow(kind, rng):
    """A multiplier that is an argument of jit, or a vmapped stack, reaches
    the dots inside scan, while, cond, checkpoint and shard_map bodies: jit
    and vmap give the bits of separate eager calls."""
    fn = _programs()[kind]
    w = random_nonzero(rng, (8, 8), scale=0.3)
    x = random_nonzero(rng, (4, 8))
    mults = [ax.mitchell(7), ax.truncated(7), ax.mbm(7)]
    eager = [np.asarray(ax.approximate(fn, m)(w, x)) for m in mults]
    assert not np.array_equal(eager[0], eager[1])
    exact = np.asarray(fn(w, x))
    assert not np.array_equal(eager[0], exact)
    jitted = jax.jit(lambda m, w, x: ax.approximate(fn, m)(w, x))
    for m, want in zip(mults, eager, strict=True):
        np.testing.assert_array_equal(bits(jitted(m, w, x)), bits(want))
    swept = jax.jit(jax.vmap(lambda m: ax.approximate(fn, m)(w, x)))(ax.stack(mults))
    for i, want in enumerate(eager):
        np.testing.assert_array_equal(bits(swept[i]), bits(want))
    if kind == "while":  # while loops have no reverse-mode derivative
        return
    loss = lambda m, w: (ax.approximate(fn, m)(w, x) ** 2).sum()  # noqa: E731
    grads = jax.jit(jax.vmap(jax.grad(loss, 1), (0, None)))
    g = grads(ax.stack(mults), w)
    assert np.all(np.isfinite(np.asarray(g))) and not np.array_equal(g[0], g[1])
    np.testing.assert_array_equal(bits(g[2]), bits(jax.grad(loss, 1)(mults[2], w)))


def test_integer_products_are_left_exact_and_reported(rng):
    """BERT multiplies attention weights by an int32 head mask: the float
    products are approximate, the integer one stays exact (and says why)."""
    a = random_nonzero(rng, (2, 3, 4, 4))
    mask = np.array([1, 0, 1], np.int32)

    def fn(a, mask):
        scores = jnp.einsum("bhqk,bhkd->bhqd", a, a)
        return jnp.einsum("...hqk,h->...hqk", scores, mask)

    report = []
    got = ax.approximate(fn, ax.mitchell(7), report=report)(a, mask)
    assert [r.multiplier for r in report] == ["mitchell7", "exact"]
    assert report[0].note is None
    assert "int32" in report[1].note and "float32" in report[1].note
    scores = ax.approximate(lambda a: jnp.einsum("bhqk,bhkd->bhqd", a, a), ax.mitchell(7))(a)
    np.testing.assert_array_equal(bits(got), bits(jnp.einsum("...hqk,h->...hqk", scores, mask)))


class _EqxNet(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Linear
    act: str = eqx.field(static=True, default="relu")

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(4, 4, 3, padding=1, key=k2)
        self.head = eqx.nn.Linear(4 * 8 * 8, 10, key=k3)

    def __call__(self, x):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        return self.head(x.reshape(-1))


def test_equinox_module_passed_whole():
    """An Equinox module is an argument like any other: its non-array leaves
    (activation functions, static fields) pass through as static data, and
    its operations are named by their attribute paths (two convolutions of
    one class no longer share a path)."""
    net = _EqxNet(jax.random.key(0))
    x = np.random.default_rng(0).standard_normal((1, 8, 8)).astype(np.float32)
    report = []
    run = ax.approximate(lambda m, x: m(x), ax.mitchell(7), report=report)
    got = run(net, x)
    assert [r.path for r in report] == ["conv1", "conv2", "head"]
    assert not np.array_equal(np.asarray(got), np.asarray(net(x)))
    jitted = eqx.filter_jit(lambda m, x: ax.approximate(lambda m, x: m(x), ax.mitchell(7))(m, x))
    np.testing.assert_array_equal(bits(jitted(net, x)), bits(got))
    policy = ax.Policy(ax.mitchell(7), rules=[("conv2", None)])
    report.clear()
    ax.approximate(lambda m, x: m(x), policy, report=report)(net, x)
    assert [r.multiplier for r in report] == ["mitchell7", "exact", "mitchell7"]


class _NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(2, 8, decode=False, rngs=rngs)
        self.mlp = nnx.Linear(8, 8, rngs=rngs)

    def __call__(self, x):
        return self.mlp(x + self.attn(x))


class _NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Linear(4, 8, rngs=rngs)
        self.blocks = nnx.List([_NnxBlock(rngs), _NnxBlock(rngs)])
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def test_nnx_paths_and_per_layer_rules():
    """NNX operations are named by attribute path, whether the module or its
    split state is the argument; rules match them, and first/last_exact act
    on whole layers."""
    model = _NnxNet(nnx.Rngs(0))
    x = np.random.default_rng(1).standard_normal((2, 5, 4)).astype(np.float32)
    report = []
    ax.approximate(lambda m, x: m(x), ax.mitchell(7), report=report)(model, x)
    paths = [r.path for r in report]
    assert paths[0] == "embed" and paths[-1] == "out"
    for b in ("blocks/0", "blocks/1"):
        for part in ("attn/query", "attn/key", "attn/value", "attn/out", "mlp"):
            assert f"{b}/{part}" in paths, paths
        assert paths.count(f"{b}/attn") == 2  # query-key and weights-value products
    graphdef, state = nnx.split(model)
    split_report = []
    run = ax.approximate(
        lambda s, x: nnx.merge(graphdef, s)(x), ax.mitchell(7), report=split_report
    )
    run(state, x)
    assert [r.path for r in split_report] == paths
    policy = ax.Policy(ax.mitchell(7), rules=[(r"blocks/1/attn", None)], last_exact=True)
    report = []
    ax.approximate(lambda m, x: m(x), policy, report=report)(model, x)
    for r in report:
        exact = r.path.startswith("blocks/1/attn") or r.path == "out"
        assert (r.multiplier == "exact") == exact, (r.path, r.multiplier)


def test_first_exact_takes_the_whole_first_layer():
    """In a transformer, the first layer is the query, key and value
    projections of the input (they read the same activation), not only the
    first GEMM; last_exact takes the last module's operations."""
    model = nnx.MultiHeadAttention(2, 8, decode=False, rngs=nnx.Rngs(0))
    x = np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32)
    report = []
    policy = ax.Policy(ax.mitchell(7), first_exact=True, last_exact=True)
    ax.approximate(lambda m, x: m(x), policy, report=report)(model, x)
    chosen = {r.path: (r.multiplier, r.rule) for r in report}
    for name in ("query", "key", "value"):
        assert chosen[name] == ("exact", "first_exact"), chosen
    assert chosen["out"] == ("exact", "last_exact")
    assert [r.multiplier for r in report[3:5]] == ["mitchell7"] * 2  # q.k, weights.v


def test_report_names_the_multiplier_of_each_trace(rng):
    """jit keys on a multiplier's name: a jitted approximate() called with one
    multiplier and then another records each under its own name."""
    w, x = random_nonzero(rng, (8, 8)), random_nonzero(rng, (4, 8))
    report = []
    f = jax.jit(lambda m, w, x: ax.approximate(lambda w, x: x @ w, m, report=report)(w, x))
    f(ax.mitchell(7), w, x)
    f(ax.mbm(7), w, x)
    assert [r.multiplier for r in report] == ["mitchell7", "mbm7"]


def test_unknown_sub_programs_are_left_exact_and_reported(rng):
    """A sub-program approximate() cannot rebuild (custom_linear_solve here)
    is bound unchanged; its products are exact and the report says so."""
    w, x = random_nonzero(rng, (4, 4)), random_nonzero(rng, (2, 4))

    def fn(w, x):
        solved = jax.lax.custom_linear_solve(lambda y: y @ w, x[0], lambda mv, b: b / 2)
        return x @ w + solved

    report = []
    ax.approximate(fn, ax.mitchell(7), report=report)(w, x)
    outside = [r for r in report if r.note is None]
    inside = [r for r in report if r.note is not None]
    assert [r.multiplier for r in outside] == ["mitchell7"]
    assert inside and all(r.multiplier == "exact" for r in inside)
    assert all("custom_linear_solve" in r.note for r in inside), [r.note for r in inside]
