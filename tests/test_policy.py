"""Policies and the using() context: the jit trap is loud, rules that match
nothing raise on every route, and no Flax global is ever swapped."""

import threading

import flax.linen as nn
import jax
import numpy as np
import pytest
from _util import bits, random_nonzero

import approxjax as ax


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(ax.Dense(8)(x))
        x = nn.relu(ax.Dense(8)(x))
        return ax.Dense(3)(x)


def _setup(rng):
    x = random_nonzero(rng, (4, 6))
    model = _Net()
    return model, model.init(jax.random.key(0), x), x


def test_jit_under_a_context_set_outside_raises(rng):
    """jit(model.apply) traced under using(truncated(2)) and called again under
    using(mitchell(7)) would silently reuse the first table: it raises with the
    fix instead, and the fix (the multiplier as an argument) is right."""
    model, params, x = _setup(rng)
    f = jax.jit(model.apply)
    with ax.using(ax.truncated(2)):
        with pytest.raises(ax.ContextTraceError, match="Pass the multiplier as an argument"):
            f(params, x)

    @jax.jit
    def forward(params, x, mult):
        with ax.using(mult):
            return model.apply(params, x)

    for mult in (ax.truncated(2), ax.mitchell(7)):
        with ax.using(mult):
            eager = model.apply(params, x)
        np.testing.assert_array_equal(bits(forward(params, x, mult)), bits(eager))
    assert not np.array_equal(
        np.asarray(forward(params, x, ax.truncated(2))),
        np.asarray(forward(params, x, ax.mitchell(7))),
    )


def test_scan_body_under_an_outer_context_raises(rng):
    """The same trap through a scan body (scan caches its body's trace too)."""
    w = random_nonzero(rng, (6, 6))
    x = random_nonzero(rng, (4, 6))
    layer = ax.Dense(6, use_bias=False)
    params = {"params": {"kernel": w}}

    def body(c, _):
        return layer.apply(params, c), None

    with ax.using(ax.mitchell(7)):
        with pytest.raises(ax.ContextTraceError):
            jax.lax.scan(body, x, None, length=2)


def test_rules_that_match_nothing_raise_on_every_route(rng):
    model, params, x = _setup(rng)
    policy = ax.Policy(ax.mitchell(7), rules=[("NoSuchLayer", None)])
    with pytest.raises(ValueError, match=r"\['NoSuchLayer'\] matched no operation.*Dense_0"):
        with ax.using(policy):
            model.apply(params, x)
    with pytest.raises(ValueError, match="matched no operation"):
        ax.approximate(model.apply, policy)(params, x)
    with pytest.raises(ValueError, match="by_index names operation"):
        with ax.using(ax.Policy(ax.mitchell(7), by_index={7: None})):
            model.apply(params, x)
    ok = ax.Policy(ax.mitchell(7), rules=[("Dense_1", None)])
    with ax.using(ok):
        model.apply(params, x)  # matched: no error


def test_first_exact_in_modules_and_last_exact_needs_the_whole_model(rng):
    model, params, x = _setup(rng)
    with ax.using(ax.Policy(ax.mitchell(7), first_exact=True)):
        got = model.apply(params, x)
    report = []
    want = ax.approximate(model.apply, ax.Policy(ax.mitchell(7), first_exact=True), report=report)(
        params, x
    )
    np.testing.assert_array_equal(bits(got), bits(want))
    assert [r.multiplier for r in report] == ["exact", "mitchell7", "mitchell7"]
    with pytest.raises(ValueError, match="last_exact needs the whole function"):
        with ax.using(ax.Policy(ax.mitchell(7), last_exact=True)):
            model.apply(params, x)


def test_plain_flax_on_another_thread_stays_exact(rng):
    """approxjax.Einsum and ConvTranspose no longer swap Flax's module
    globals: plain Flax traced meanwhile on another thread is exact."""
    x = random_nonzero(rng, (2, 6, 8))
    plain = nn.Einsum((8, 3, 5), "abc,cde->abde")
    params = plain.init(jax.random.key(0), x)
    want = plain.apply(params, x)
    ours = ax.Einsum((8, 3, 5), "abc,cde->abde", multiplier=ax.mitchell(7))
    stop = threading.Event()
    errors = []

    def approximate_forever():
        while not stop.is_set():
            ours.apply(params, x)

    worker = threading.Thread(target=approximate_forever)
    worker.start()
    try:
        for _ in range(20):
            got = jax.jit(plain.apply)(params, x)
            if not np.array_equal(bits(got), bits(want)):
                errors.append("plain Flax gave approximate products")
    finally:
        stop.set()
        worker.join()
    assert not errors


def test_multiplier_is_truthy_and_policies_print():
    assert bool(ax.mitchell(7)) and bool(ax.stack([ax.mitchell(7), ax.mbm(7)]))
    assert "first exact" in repr(ax.Policy(ax.mbm(7), first_exact=True))
