"""Flax modules, approximate(fn), policies and vmapped multiplier sweeps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _util import bits, random_nonzero
from flax import nnx

import approxjax as ax
from approxjax import reference as ref

X3 = np.random.default_rng(1).standard_normal((2, 6, 8)).astype(np.float32)
MODULES = [
    (nn.Dense, ax.Dense, (5,), {}),
    (nn.DenseGeneral, ax.DenseGeneral, ((3, 4),), {}),
    (nn.Conv, ax.Conv, (4, (3,)), {"strides": 2}),
    (nn.ConvTranspose, ax.ConvTranspose, (4, (3,), (2,)), {}),
    (nn.Einsum, ax.Einsum, ((8, 3, 5), "abc,cde->abde"), {}),
    (nn.MultiHeadDotProductAttention, ax.MultiHeadDotProductAttention, (2,), {}),
]


@pytest.mark.parametrize("flax_cls,ax_cls,args,kwargs", MODULES)
def test_modules_match_flax_parameters_and_the_approximate_route(flax_cls, ax_cls, args, kwargs):
    mult = ax.mitchell(7)
    plain = flax_cls(*args, **kwargs)
    params = plain.init(jax.random.key(0), X3)
    ours = ax_cls(*args, **kwargs, multiplier=mult)
    mine = ours.init(jax.random.key(0), X3)
    # Same names, shapes and initial values: a plain Flax checkpoint loads unchanged.
    assert jax.tree_util.tree_structure(mine) == jax.tree_util.tree_structure(params)
    for a, b in zip(
        jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    exact = plain.apply(params, X3)
    got = ours.apply(params, X3)
    assert got.shape == exact.shape
    assert 0 < float(jnp.max(jnp.abs(got - exact))) < 0.5 * float(jnp.max(jnp.abs(exact)))
    report = []
    via_fn = ax.approximate(plain.apply, mult, report=report)(params, X3)
    np.testing.assert_array_equal(bits(got), bits(via_fn))
    assert report and all(r.multiplier == "mitchell7" for r in report)
    with ax.using(mult):
        in_context = ax_cls(*args, **kwargs).apply(params, X3)
    np.testing.assert_array_equal(bits(in_context), bits(got))
    np.testing.assert_array_equal(bits(ax_cls(*args, **kwargs).apply(params, X3)), bits(exact))


def test_attention_products_are_approximate():
    report = []
    mha = nn.MultiHeadDotProductAttention(2)
    params = mha.init(jax.random.key(0), X3)
    ax.approximate(mha.apply, ax.mitchell(7), report=report)(params, X3)
    kinds = [r.path.rsplit("/", 1)[-1] for r in report]
    assert len(report) == 6, kinds  # q, k, v projections, q.k, weights.v, output


def test_dense_forward_equals_reference(rng):
    x = random_nonzero(rng, (7, 9))
    layer = ax.Dense(4, multiplier=ax.mbm(7), use_bias=False)
    params = layer.init(jax.random.key(0), x)
    got = layer.apply(params, x)
    want = ref.sequential_dot_general(
        x, params["params"]["kernel"], (((1,), (0,)), ((), ())), ax.mbm(7).lut
    )
    np.testing.assert_array_equal(bits(got), bits(want))


def test_mixed_precision_keeps_dtypes(rng):
    x = jnp.asarray(random_nonzero(rng, (4, 6, 6, 3)), jnp.bfloat16)
    conv = ax.Conv(
        4, (3, 3), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, multiplier=ax.mitchell(7)
    )
    params = conv.init(jax.random.key(0), x)
    y = conv.apply(params, x)
    assert y.dtype == jnp.bfloat16
    dense = ax.Dense(3, dtype=jnp.float16, multiplier=ax.mitchell(7))
    out = dense.apply(dense.init(jax.random.key(0), x.astype(jnp.float16)), x.astype(jnp.float16))
    assert out.dtype == jnp.float16


class _FlaxCNN(nn.Module):
    """A CNN from plain flax.linen (a model approxjax did not write)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(16)(x))
        return nn.Dense(10)(x)


class _ApproxCNN(nn.Module):
    """The same CNN built from approxjax modules."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(ax.Conv(6, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(ax.Dense(16)(x))
        return ax.Dense(10)(x)


def _data(seed=0, n=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 8, 1)).astype(np.float32)
    y = (x[:, :4].sum((1, 2, 3)) > 0).astype(np.int32) + 2 * (x[:, 4:].sum((1, 2, 3)) > 0)
    return jnp.asarray(x), jnp.asarray(y)


def test_foreign_linen_model_equals_module_route():
    x, _ = _data()
    params = _FlaxCNN().init(jax.random.key(0), x)
    mult = ax.mitchell(7)
    foreign = jax.jit(ax.approximate(_FlaxCNN().apply, mult))(params, x)

    @jax.jit
    def forward(params, x, mult):
        with ax.using(mult):
            return _ApproxCNN().apply(params, x)

    np.testing.assert_array_equal(bits(foreign), bits(forward(params, x, mult)))


def test_nnx_model_under_approximate():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 6, (3, 3), rngs=rngs)
            self.fc = nnx.Linear(8 * 8 * 6, 10, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.conv(x))
            return self.fc(x.reshape(x.shape[0], -1))

    x, _ = _data()
    model = Net(nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    mult = ax.mitchell(7)
    run = ax.approximate(lambda state, x: nnx.merge(graphdef, state)(x), mult)
    got = jax.jit(run)(state, x)
    # The same computation with approxjax ops written out by hand.
    h = (
        ax.conv_general_dilated(
            x,
            model.conv.kernel.get_value(),
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            multiplier=mult,
        )
        + model.conv.bias.get_value()
    )
    h = jax.nn.relu(h).reshape(x.shape[0], -1)
    want = (
        ax.dot_general(h, model.fc.kernel.get_value(), (((1,), (0,)), ((), ())), multiplier=mult)
        + model.fc.bias.get_value()
    )
    np.testing.assert_array_equal(bits(got), bits(want))
    grads = jax.grad(lambda s: jnp.sum(run(s, x) ** 2))(state)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(state)


def _train(model, params, multiplier, steps=8, lr=0.05):
    opt = optax.sgd(lr, momentum=0.9)
    x, y = _data(n=64)

    def loss_fn(p, mu):
        with ax.using(mu):
            logits = model.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, o, mu):
        loss, g = jax.value_and_grad(loss_fn)(p, mu)
        upd, o = opt.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss

    losses = []
    o = opt.init(params)
    for _ in range(steps):
        params, o, loss = step(params, o, multiplier)
        losses.append(float(loss))
    return params, losses, step, opt


def test_cnn_trains_under_mitchell():
    x, _ = _data()
    model = _ApproxCNN()
    params = model.init(jax.random.key(0), x)
    _, losses, _, _ = _train(model, params, ax.mitchell(7), steps=15)
    assert losses[-1] < 0.7 * losses[0], losses


def test_vmapped_sweep_equals_separate_runs():
    x, _ = _data()
    model = _ApproxCNN()
    params = model.init(jax.random.key(0), x)
    mults = [ax.mitchell(7), ax.mbm(7), ax.truncated(7)]
    separate = [_train(model, params, m, steps=4)[0] for m in mults]
    _, _, step, opt = _train(model, params, mults[0], steps=0)
    stack = ax.stack(mults)
    sweep = jax.jit(jax.vmap(step.__wrapped__ if hasattr(step, "__wrapped__") else step))
    ps = jax.tree_util.tree_map(lambda a: jnp.stack([a] * 3), params)
    os = jax.vmap(opt.init)(ps)
    for _ in range(4):
        ps, os, _ = sweep(ps, os, stack)
    for i in range(3):
        for a, b in zip(
            jax.tree_util.tree_leaves(separate[i]),
            jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda t, i=i: t[i], ps)),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # One kernel launch per GEMM for all three multipliers.
    hlo = sweep.lower(ps, os, stack).as_text()
    calls = [ln for ln in hlo.splitlines() if "approxjax_gemm" in ln and "call" in ln]
    convs = [ln for ln in hlo.splitlines() if "approxjax_conv_gemm" in ln and "call" in ln]
    # 3 layers x (forward, input grad, weight grad), less the first layer's input
    # gradient, which nothing needs; the convolution's forward and weight
    # gradient read its patches in place (on the CPU).
    assert len(calls) + len(convs) == 8, (len(calls), len(convs))
    assert len(convs) == (2 if jax.default_backend() == "cpu" else 0), len(convs)
    calls += convs
    assert all("tensor<3x" in ln for ln in calls)


def test_policies_choose_per_operation():
    x, _ = _data()
    params = _FlaxCNN().init(jax.random.key(0), x)
    report = []
    policy = ax.Policy(ax.mitchell(7), rules=[(r"Dense_0", ax.mbm(7))], last_exact=True)
    ax.approximate(_FlaxCNN().apply, policy, report=report)(params, x)
    assert [(r.path, r.multiplier) for r in report] == [
        ("_FlaxCNN/Conv_0", "mitchell7"),
        ("_FlaxCNN/Dense_0", "mbm7"),
        ("_FlaxCNN/Dense_1", "exact"),
    ]
    report.clear()
    ax.approximate(
        _FlaxCNN().apply,
        ax.Policy(ax.mitchell(7), first_exact=True, by_index={2: ax.mbm(7)}),
        report=report,
    )(params, x)
    assert [r.multiplier for r in report] == ["exact", "mitchell7", "mbm7"]
    with ax.using(ax.Policy(ax.mitchell(7), rules={"Conv": None})):
        out = _ApproxCNN().apply(params, x)
    mixed = ax.approximate(_FlaxCNN().apply, ax.Policy(ax.mitchell(7), rules={"Conv": None}))
    np.testing.assert_array_equal(bits(out), bits(mixed(params, x)))


def test_forward_and_backward_multipliers_in_a_policy(rng):
    a = random_nonzero(rng, (5, 6))
    b = random_nonzero(rng, (6, 3))
    policy = ax.Policy(ax.mitchell(7), input_grad=None, weight_grad=ax.mbm(7))
    f = ax.approximate(lambda a, b: jnp.sum(jnp.sin(a @ b)), policy)
    ga, gb = jax.grad(f, argnums=(0, 1))(a, b)
    g = jnp.cos(ax.dot_general(a, b, (((1,), (0,)), ((), ())), multiplier=ax.mitchell(7)))
    np.testing.assert_allclose(ga, g @ b.T, rtol=1e-5, atol=1e-6)
    want_gb = ax.dot_general(a.T, g, (((1,), (0,)), ((), ())), multiplier=ax.mbm(7))
    np.testing.assert_array_equal(bits(gb), bits(want_gb))


def test_bad_policies():
    x, _ = _data()
    params = _FlaxCNN().init(jax.random.key(0), x)
    with pytest.raises(
        ValueError,
        match=r"pattern\(s\) \['Dense_7'\] matched no operation.*"
        r"_FlaxCNN/Conv_0",
    ):
        ax.approximate(_FlaxCNN().apply, ax.Policy(rules=[("Dense_7", None)]))(params, x)
    with pytest.raises(ValueError, match="by_index names operation\\(s\\) \\[5\\]"):
        ax.approximate(_FlaxCNN().apply, ax.Policy(by_index={5: None}))(params, x)
    with pytest.raises(ValueError, match="not a regular expression"):
        ax.Policy(rules=[("Dense(", None)])
    with pytest.raises(TypeError, match="multiplier of rule 'Dense' must be a Multiplier"):
        ax.Policy(rules=[("Dense", "mitchell7")])
    with pytest.raises(TypeError, match="expected a Multiplier, an Arithmetic, a Policy or None"):
        ax.approximate(_FlaxCNN().apply, "mitchell7")
    with pytest.raises(TypeError, match="multiplier must be 'context', a Multiplier"):
        ax.Dense(3, multiplier="mitchell7").init(jax.random.key(0), x.reshape(32, -1))


def test_approximate_follows_jit_scan_and_cond(rng):
    w = random_nonzero(rng, (4, 4)) * 0.3
    xs = random_nonzero(rng, (5, 4))

    @jax.jit
    def cell(h, x):
        return jnp.tanh(h @ w + x)

    def rnn(xs):
        def step(h, x):
            h = jax.lax.cond(x[0] > 0, cell, lambda h, x: cell(h, -x), h, x)
            return h, h

        return jax.lax.scan(step, jnp.zeros(4), xs)[1]

    report = []
    mult = ax.mitchell(5)
    got = ax.approximate(rnn, mult, report=report)(xs)
    h = jnp.zeros(4)
    for x in xs:
        x = x if x[0] > 0 else -x
        h = jnp.tanh(ax.dot_general(h, w, (((0,), (0,)), ((), ())), multiplier=mult) + x)
    np.testing.assert_allclose(got[-1], h, rtol=1e-6)
    assert len({r.index for r in report}) == 2  # the cell's dot in each cond branch
