"""Training and evaluation steps under a multiplier: the one shared helper.

The runner, the notebooks, the benchmarks and the tests build their steps
here. A step takes the multiplier (or policy) as an argument and makes it
current with :func:`approxjax.using` while the model is traced, so one jitted
step serves every multiplier of the same shape and ``jax.vmap`` over a stack
trains one model per multiplier in one program::

    step = make_train_step(model.apply, optax.adam(1e-3))
    params, opt_state, loss, metrics = jax.jit(step)(params, opt_state, x, y, ax.mitchell(7))
    sweep = jax.jit(jax.vmap(step, in_axes=(0, 0, None, None, 0)))  # S models at once
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

from approxjax._src.interpret.interpreter import approximate
from approxjax._src.interpret.policy import using

Metrics = dict[str, jax.Array]


def classification_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, Metrics]:
    """Mean softmax cross-entropy and accuracy (labels are class indices; any
    leading shape, so a language model's (batch, time) targets work too)."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def _identity(multiplier):
    return multiplier


def make_loss(
    apply_fn: Callable[..., Any],
    loss: Callable[[Any, Any], tuple[jax.Array, Metrics]] = classification_loss,
    policy: Callable[[Any], Any] = _identity,
    route: Literal["using", "approximate"] = "using",
) -> Callable[..., tuple[jax.Array, Metrics]]:
    """``loss_fn(params, x, y, multiplier) -> (loss, metrics)`` with the model
    traced under ``using(policy(multiplier))`` (``route="using"``: approxjax's
    modules read it), or run through ``approximate(apply_fn,
    policy(multiplier))`` (``route="approximate"``: any model, and policies
    that need the whole program, such as ``last_exact``)."""

    run = under(route, policy)

    def loss_fn(params, x, y, multiplier):
        return loss(run(apply_fn, multiplier)(params, x), y)

    return loss_fn


def under(
    route: Literal["using", "approximate"] = "using",
    policy: Callable[[Any], Any] = _identity,
) -> Callable[[Callable, Any], Callable]:
    """``run(fn, multiplier)``: ``fn`` traced under ``using(policy(multiplier))``
    (``route="using"``) or wrapped by ``approximate(fn, policy(multiplier))``."""

    def run(fn, multiplier):
        if route == "approximate":
            return approximate(fn, policy(multiplier))

        def traced(*args):
            with using(policy(multiplier)):
                return fn(*args)

        return traced

    return run


def make_train_step(
    apply_fn: Callable[..., Any],
    optimizer: optax.GradientTransformation,
    *,
    loss: Callable[[Any, Any], tuple[jax.Array, Metrics]] = classification_loss,
    policy: Callable[[Any], Any] = _identity,
    route: Literal["using", "approximate"] = "using",
) -> Callable[..., tuple[Any, Any, jax.Array, Metrics]]:
    """A training step ``step(params, opt_state, x, y, multiplier)``.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs`` (a Flax model's ``apply``,
        built from approxjax modules or wrapped with :func:`approxjax.approximate`).
      optimizer: an optax transformation.
      loss: ``loss(outputs, y) -> (scalar loss, metrics dict)``.
      policy: maps the step's ``multiplier`` argument to what ``using`` gets
        (a Policy built around it, say); the identity by default.
      route: ``"using"`` (approxjax modules read the multiplier from the
        context) or ``"approximate"`` (the whole ``apply_fn`` goes through
        :func:`approxjax.approximate`: any model; needed for ``last_exact``).

    Returns:
      ``step(params, opt_state, x, y, multiplier) -> (params, opt_state, loss,
      metrics)``, forward and backward under the multiplier.
    """
    loss_fn = make_loss(apply_fn, loss, policy, route)

    def step(params, opt_state, x, y, multiplier):
        (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, x, y, multiplier
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, metrics

    return step


def make_eval_step(
    apply_fn: Callable[..., Any],
    *,
    loss: Callable[[Any, Any], tuple[jax.Array, Metrics]] = classification_loss,
    policy: Callable[[Any], Any] = _identity,
    route: Literal["using", "approximate"] = "using",
) -> Callable[..., tuple[jax.Array, Metrics]]:
    """``evaluate(params, x, y, multiplier) -> (loss, metrics)`` (no gradients)."""
    return make_loss(apply_fn, loss, policy, route)
