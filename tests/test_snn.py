"""Spiking networks (approxjax.snn): neurons against a NumPy model, surrogate
gradients against their formulas, encoders on hand-made cases, the spiking
CNN under multipliers (vmap, approximate) and in the runner."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import approxjax as ax
from approxjax import snn
from approxjax._src.runner import config as experiment_config
from approxjax._src.runner import sweep
from approxjax.training import make_loss, make_train_step


@pytest.mark.parametrize("surrogate,slope", [("fast_sigmoid", 25.0), ("arctan", 2.0)])
def test_spike_and_surrogate_gradients(surrogate, slope):
    x = np.random.default_rng(0).standard_normal(200).astype(np.float32) * 0.3
    x[:3] = [0.0, -1e-7, 1e-7]
    np.testing.assert_array_equal(np.asarray(snn.spike(x, surrogate, slope)), x >= 0)
    grad = jax.grad(lambda v: jnp.sum(snn.spike(v, surrogate, slope) * 3.0))(jnp.asarray(x))
    xd = x.astype(np.float64)
    if surrogate == "fast_sigmoid":
        want = 1.0 / (1.0 + slope * np.abs(xd)) ** 2
    else:
        want = (slope / 2.0) / (1.0 + (np.pi / 2.0 * slope * xd) ** 2)
    np.testing.assert_allclose(np.asarray(grad), 3.0 * want, rtol=1e-5)


def _numpy_lif(currents, beta, threshold, reset):
    v = np.zeros_like(currents[0], np.float64)
    vs, ss = [], []
    for current in currents:
        v = beta * v + current
        s = (v - threshold >= 0).astype(np.float64)
        v = v - s * threshold if reset == "subtract" else v * (1 - s)
        vs.append(v)
        ss.append(s)
    return np.stack(vs), np.stack(ss)


@pytest.mark.parametrize("cls,beta,reset", [(snn.LIF, 0.8, "subtract"), (snn.LIF, 0.5, "zero"),
                                            (snn.IF, 1.0, "subtract")])  # fmt: skip
def test_neurons_match_a_numpy_model(cls, beta, reset):
    rng = np.random.default_rng(1)
    currents = rng.uniform(0.2, 0.9, (12, 5)).astype(np.float32)
    neuron = cls(beta=beta, threshold=1.0, reset=reset)
    v = jnp.zeros(5)
    vs, ss = [], []
    for current in currents:
        v, s = neuron.apply({}, v, jnp.asarray(current))
        vs.append(v)
        ss.append(s)
    want_v, want_s = _numpy_lif(currents.astype(np.float64), beta, 1.0, reset)
    np.testing.assert_array_equal(np.stack(ss), want_s)
    assert 5 < want_s.sum() < want_s.size  # some spikes, not all
    np.testing.assert_allclose(np.stack(vs), want_v, rtol=1e-5, atol=1e-6)


def test_leak_product_goes_through_the_multiplier():
    v = jnp.asarray(np.random.default_rng(2).uniform(0.1, 0.9, 64).astype(np.float32))
    current = jnp.zeros(64)
    mult = ax.mitchell(2)
    with ax.using(mult):
        got, _ = snn.LIF(beta=0.7).apply({}, v, current)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ax.multiply(0.7, v, mult)))
    exact, _ = snn.LIF(beta=0.7).apply({}, v, current)
    assert not np.array_equal(np.asarray(got), np.asarray(exact))
    own, _ = snn.LIF(beta=0.7, multiplier=mult).apply({}, v, current)  # the module's own
    np.testing.assert_array_equal(np.asarray(own), np.asarray(got))


@pytest.mark.parametrize("fmt", ["bfloat16", "float16", "e4m3"])
@pytest.mark.parametrize("rounding", ["nearest_even", "toward_zero", "away_from_zero"])
def test_membrane_sums_round_once_to_the_accumulator(fmt, rounding):
    """leak + current rounded once to the accumulator format: equal to the
    exact (float64) sum rounded by the reference, including sums that a
    float32 addition would first round onto a tie."""
    from approxjax._src.arithmetic.reference import round_to_format
    from approxjax._src.flax.snn import rounded_sum

    rng = np.random.default_rng(4)
    n = 4000
    a = (rng.standard_normal(n) * 2.0 ** rng.integers(-6, 6, n)).astype(np.float32)
    b = (rng.standard_normal(n) * 2.0 ** rng.integers(-6, 6, n)).astype(np.float32)
    # 1 + 2^-8 + 2^-30: float32 drops 2^-30 onto bfloat16's tie 1 + 2^-8.
    a[:3] = [1.0, 1.0, -1.0]
    b[:3] = [np.float32(2**-8), np.float32(2**-8 + 2**-30), np.float32(-(2**-8) - 2**-30)]
    f = ax.formats.get(fmt)
    got = np.asarray(rounded_sum(jnp.asarray(a), jnp.asarray(b), f, rounding))
    want = round_to_format(a.astype(np.float64) + b.astype(np.float64), f, rounding)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    if fmt == "bfloat16" and rounding == "nearest_even":  # twice rounded: the tie's even side
        twice = np.asarray(ax.formats.convert(jnp.asarray(a) + jnp.asarray(b), f, rounding))
        assert twice[1] == 1.0 and got[1] == np.float32(1 + 2**-7)
    arith = ax.Arithmetic(accumulator=fmt, accumulator_rounding=rounding)
    v0 = jnp.asarray(a)
    with ax.using(arith):
        v, _ = snn.LIF(beta=0.75, threshold=1e9).apply({}, v0, jnp.asarray(b))
    leak = np.asarray(ax.multiply(0.75, v0, arith)).astype(np.float64)
    want = round_to_format(leak + b.astype(np.float64), f, rounding)
    np.testing.assert_array_equal(np.asarray(v).view(np.uint32), want.view(np.uint32))


def test_encoders():
    x = jnp.asarray([1.0, 0.5, 0.0, 0.005, 0.75])
    spikes = np.asarray(snn.latency_encode(x, 5))
    assert spikes.shape == (5, 5)
    np.testing.assert_array_equal(spikes.sum(0), [1, 1, 0, 0, 1])  # at most one spike each
    np.testing.assert_array_equal(np.argmax(spikes, 0)[[0, 1, 4]], [0, 2, 1])
    p = jnp.asarray([0.0, 0.2, 0.9, 1.0])
    trains = snn.rate_encode(jax.random.key(0), p, 4000)
    rates = np.asarray(trains.mean(0))
    sigma = np.sqrt(np.asarray(p) * (1 - np.asarray(p)) / 4000)
    assert np.all(np.abs(rates - np.asarray(p)) <= 4 * sigma + 1e-9)
    np.testing.assert_array_equal(trains, snn.rate_encode(jax.random.key(0), p, 4000))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: snn.LIF(beta=1.5).apply({}, jnp.zeros(2), jnp.zeros(2)), "beta must be in"),
        (lambda: snn.LIF(reset="hard").apply({}, jnp.zeros(2), jnp.zeros(2)), "reset must be"),
        (lambda: snn.spike(jnp.zeros(2), "sigmoid"), "surrogate must be one of"),
        (lambda: snn.spike(jnp.zeros(2), "arctan", 0.0), "slope must be a number > 0"),
        (lambda: snn.rate_encode(jax.random.key(0), jnp.zeros(2), 0), "time_steps must be"),
        (lambda: snn.LIF().apply({}, jnp.zeros(2), jnp.zeros(3)), "must have one shape"),
    ],
)
def test_bad_neuron_settings(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_spiking_cnn_trains_under_multipliers_and_vmaps():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.uniform(0, 1, (16, 8, 8, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 16))
    model = snn.SpikingCNN(10, time_steps=4)
    params = model.init(jax.random.key(0), x[:2])
    opt = optax.adam(1e-2)
    step = jax.jit(make_train_step(model.apply, opt))
    state = opt.init(params)
    losses = []
    p = params
    for _ in range(8):
        p, state, loss, _ = step(p, state, x, y, ax.mitchell(4))
        losses.append(float(loss))
    assert losses[-1] < losses[0] and np.all(np.isfinite(losses))
    # A stack of two multipliers in one vmapped program equals each alone.
    mults = [ax.mitchell(4), ax.truncated(4)]
    loss_fn = make_loss(model.apply)
    both = jax.jit(jax.vmap(loss_fn, in_axes=(None, None, None, 0)))(params, x, y, ax.stack(mults))
    for i, mult in enumerate(mults):
        alone = jax.jit(loss_fn)(params, x, y, mult)
        np.testing.assert_allclose(np.asarray(both[0][i]), np.asarray(alone[0]), rtol=1e-6)
    exact = jax.jit(loss_fn)(params, x, y, None)[0]
    assert float(exact) != float(both[0][0])  # the products are approximate
    # approximate() on the same model (its approxjax modules read the multiplier).
    report = []
    out = ax.approximate(model.apply, ax.mitchell(4), report=report)(params, x)
    assert out.shape == (16, 10) and report
    latency = snn.SpikingCNN(10, time_steps=4, encoding="latency")
    assert latency.apply(params, x).shape == (16, 10)


def test_runner_trains_the_spiking_cnn(tmp_path):
    cfg = experiment_config.SweepConfig(
        model="scnn",
        time_steps=3,
        multipliers=["mitchell4", "truncated4"],
        epochs=1,
        train_limit=128,
        out_dir="",
    )
    res = sweep.run_sweep(cfg, log=lambda m: None, show_progress=False)
    assert list(res["runs"]) == ["float32", "mitchell4", "truncated4"]
    assert res["config"]["time_steps"] == 3
    with pytest.raises(ValueError, match="--time-steps must be an integer >= 1"):
        sweep.run_sweep(
            experiment_config.SweepConfig(**{**cfg.__dict__, "time_steps": 0}),
            log=lambda m: None,
            show_progress=False,
        )


def test_stochastic_membrane_sums_are_refused():
    arith = ax.Arithmetic(
        accumulator="bfloat16", accumulator_rounding="stochastic", key=jax.random.key(0)
    )
    with ax.using(arith), pytest.raises(NotImplementedError, match="stochastic accumulator"):
        snn.LIF().apply({}, jnp.zeros(3), jnp.ones(3))


def test_approximate_runs_a_spyx_model():
    """approximate(fn) on a model written with Spyx (flax.nnx LIF layers run by
    spyx.nn.run's lax.scan): its synaptic products go through the multiplier,
    forward and backward, matching the same network written out by hand with
    approxjax.dot_general."""
    spyx = pytest.importorskip("spyx")  # the optional extra approxjax[spyx]
    from flax import nnx

    rngs = nnx.Rngs(0)
    model = spyx.nn.Sequential(
        nnx.Linear(12, 10, rngs=rngs), spyx.nn.LIF((10,), beta=0.8, rngs=rngs),
        nnx.Linear(10, 4, rngs=rngs), spyx.nn.LIF((4,), beta=0.7, rngs=rngs),
    )  # fmt: skip
    graphdef, state = nnx.split(model)
    x = jax.random.uniform(jax.random.key(1), (6, 5, 12), minval=0.2, maxval=1.5)  # T, B, in

    def forward(state, x):
        outputs, _ = spyx.nn.run(nnx.merge(graphdef, state), x)
        return outputs.mean(0)  # spike rates (B, 4)

    mult = ax.mitchell(3)
    records = []
    got = jax.jit(ax.approximate(forward, mult, report=records))(state, x)
    assert len(records) >= 2  # both Linear layers' dot_generals, inside the scan

    def by_hand(x):
        dims = (((1,), (0,)), ((), ()))
        v1, v2, rates = jnp.zeros((5, 10)), jnp.zeros((5, 4)), []
        for t in range(x.shape[0]):
            lin1, lif1, lin2, lif2 = model.layers
            h = ax.dot_general(x[t], lin1.kernel[...], dims, multiplier=mult) + lin1.bias[...]
            s1 = lif1.spike(v1 - 1.0)
            v1 = 0.8 * v1 + h - s1
            h = ax.dot_general(s1, lin2.kernel[...], dims, multiplier=mult) + lin2.bias[...]
            s2 = lif2.spike(v2 - 1.0)
            v2 = 0.7 * v2 + h - s2
            rates.append(s2)
        return jnp.stack(rates).mean(0)

    np.testing.assert_allclose(got, jax.jit(by_hand)(x), rtol=1e-6, atol=1e-6)
    assert not np.allclose(got, jax.jit(forward)(state, x))  # float32 spikes differ
    # Surrogate gradients flow through the approximate products: a few steps train.
    target = jnp.asarray([[1.0, 0.0, 1.0, 0.0]] * 5)
    loss = lambda s: jnp.mean((ax.approximate(forward, mult)(s, x) - target) ** 2)  # noqa: E731
    step = jax.jit(jax.value_and_grad(loss))
    first, grads = step(state)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    for _ in range(20):
        value, grads = step(state)
        state = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, state, grads)
    assert float(value) < float(first)
