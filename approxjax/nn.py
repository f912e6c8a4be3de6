"""Drop-in Flax (linen) modules whose products go through a simulated multiplier.

``approxjax.Dense``, ``DenseGeneral``, ``Conv``, ``ConvTranspose``, ``Einsum`` and
``MultiHeadDotProductAttention`` are the ``flax.linen`` classes themselves,
subclassed: same constructor arguments, defaults, parameter names and shapes
(a checkpoint trained with plain Flax loads unchanged), plus three fields:

* ``multiplier``: ``"context"`` (default: the multiplier or policy of the
  innermost :func:`approxjax.using`, exact when there is none), a
  :class:`~approxjax.Multiplier`, a :class:`~approxjax.Policy`, or ``None``
  (exact);
* ``input_grad_multiplier`` and ``weight_grad_multiplier``: ``"forward"``, a
  Multiplier or None, as in :func:`approxjax.dot_general`.

They inject the approximate ops into Flax's own hooks (``dot_general``,
``conv_general_dilated``, the attention einsums); ``Einsum`` and
``ConvTranspose``, which have no hook, run their Flax implementation with its
einsum / transposed convolution routed through :func:`approxjax.approximate`.
In attention, the query-key and attention-value products are approximate too.

The multiplier is chosen when the module is traced. With the default
``"context"`` a training step takes the multiplier as an argument and sets it
with ``approxjax.using``, so ``jax.vmap`` over a stack of multipliers trains
one model per multiplier in one program (see :mod:`approxjax.policy`).

NNX: ``approxjax.approximate(lambda x: model(x), multiplier)`` runs an
unmodified ``flax.nnx`` model with approximate products (see the README).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any

import flax.linen as nn
import flax.linen.linear as flax_linear
import jax.numpy as jnp
from jax import lax

from approxjax import conv as _conv
from approxjax import interpreter as _interpreter
from approxjax import ops as _ops
from approxjax.multipliers import Multiplier
from approxjax.policy import FORWARD, GemmMultipliers, Policy, current_path, current_policy

CONTEXT = "context"


def resolve(multiplier: Any, input_grad: Any = FORWARD, weight_grad: Any = FORWARD):
    """The GemmMultipliers of an operation traced now, at the current module path."""
    if isinstance(multiplier, str) and multiplier == CONTEXT:
        policy = current_policy()
        if policy is None:
            return GemmMultipliers(None)
        choice, _ = policy.choose(current_path())
        return choice
    if isinstance(multiplier, Policy):
        choice, _ = multiplier.choose(current_path())
        return choice
    if multiplier is None or isinstance(multiplier, Multiplier):
        return GemmMultipliers(multiplier, input_grad, weight_grad)
    raise TypeError(
        f"multiplier must be 'context', a Multiplier, a Policy or None; got {multiplier!r}"
    )


class _Settings:
    """A module's multiplier fields; compared by identity (never cached on)."""

    __slots__ = ("multiplier", "input_grad", "weight_grad")

    def __init__(self, module):
        self.multiplier = module.multiplier
        self.input_grad = module.input_grad_multiplier
        self.weight_grad = module.weight_grad_multiplier

    def choice(self) -> GemmMultipliers:
        return resolve(self.multiplier, self.input_grad, self.weight_grad)


class ApproxDotGeneral(_Settings):
    """A ``lax.dot_general``-compatible callable that reads the multiplier when traced."""

    def __call__(
        self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **unused
    ):
        c = self.choice()
        if c.exact:
            return lax.dot_general(
                lhs,
                rhs,
                dimension_numbers,
                precision=precision,
                preferred_element_type=preferred_element_type,
            )
        return _ops.dot_general(
            lhs,
            rhs,
            dimension_numbers,
            precision,
            preferred_element_type,
            multiplier=c.forward,
            input_grad_multiplier=c.input_grad,
            weight_grad_multiplier=c.weight_grad,
        )


class ApproxConv(_Settings):
    """A ``lax.conv_general_dilated``-compatible callable (see ApproxDotGeneral)."""

    def __call__(self, *args, **kwargs):
        c = self.choice()
        if c.exact:
            return lax.conv_general_dilated(*args, **kwargs)
        return _conv.conv_general_dilated(
            *args,
            **kwargs,
            multiplier=c.forward,
            input_grad_multiplier=c.input_grad,
            weight_grad_multiplier=c.weight_grad,
        )


def _einsum_fn(settings: _Settings):
    # A fresh callable per use: jnp.einsum caches on its _dot_general argument.
    dot = ApproxDotGeneral.__new__(ApproxDotGeneral)
    dot.multiplier, dot.input_grad, dot.weight_grad = (
        settings.multiplier,
        settings.input_grad,
        settings.weight_grad,
    )

    def einsum(subscripts, *operands, **kwargs):
        kwargs.pop("precision", None)
        return jnp.einsum(subscripts, *operands, _dot_general=functools.partial(dot), **kwargs)

    return einsum


class _Namespace:
    """A module namespace with some attributes replaced."""

    def __init__(self, base, **overrides):
        self._base = base
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._base, name)


_SWAP_LOCK = threading.RLock()


@contextlib.contextmanager
def _swapped(module, name: str, value):
    with _SWAP_LOCK:
        old = getattr(module, name)
        setattr(module, name, value)
        try:
            yield
        finally:
            setattr(module, name, old)


def _approx_module(base, doc: str, hooks=(), call=None):
    """``base`` with the three multiplier fields, and approximate ops in its hooks.

    ``hooks`` are ``(field, cls_field, make)``: when neither the user's field
    nor its ``*_cls`` counterpart is set, ``make(module)`` fills the field.
    """

    def __post_init__(self):
        free = [getattr(self, f) is None and getattr(self, c) is None for f, c, _ in hooks]
        for (field, _, make), unset in zip(hooks, free, strict=True):
            if unset:
                object.__setattr__(self, field, make(self))
        base.__post_init__(self)

    namespace = {
        "__module__": __name__,
        "__qualname__": base.__name__,
        "__doc__": doc,
        "__annotations__": {
            "multiplier": Any,
            "input_grad_multiplier": Any,
            "weight_grad_multiplier": Any,
        },
        "multiplier": CONTEXT,
        "input_grad_multiplier": FORWARD,
        "weight_grad_multiplier": FORWARD,
        "__post_init__": __post_init__,
    }
    if call is not None:
        namespace["__call__"] = nn.compact(call)
    return type(base.__name__, (base,), namespace)


def _einsum_call(self, inputs, einsum_str=None):
    proxy = _Namespace(flax_linear.jnp, einsum=_einsum_fn(_Settings(self)))
    with _swapped(flax_linear, "jnp", proxy):
        return nn.Einsum.__call__(self, inputs, einsum_str)


def _conv_transpose_call(self, inputs):
    c = _Settings(self).choice()
    if c.exact:
        return nn.ConvTranspose.__call__(self, inputs)
    policy = Policy(c.forward, input_grad=c.input_grad, weight_grad=c.weight_grad)

    def conv_transpose(lhs, rhs, *args, **kwargs):
        return _interpreter.approximate(
            lambda a, b: lax.conv_transpose(a, b, *args, **kwargs), policy
        )(lhs, rhs)

    with _swapped(flax_linear, "lax", _Namespace(flax_linear.lax, conv_transpose=conv_transpose)):
        return nn.ConvTranspose.__call__(self, inputs)


_DOT = ("dot_general", "dot_general_cls", ApproxDotGeneral)

Dense = _approx_module(
    nn.Dense, "``flax.linen.Dense`` with approximate products (see the module docstring).", [_DOT]
)
DenseGeneral = _approx_module(
    nn.DenseGeneral, "``flax.linen.DenseGeneral`` with approximate products.", [_DOT]
)
Conv = _approx_module(
    nn.Conv,
    "``flax.linen.Conv`` with approximate products.",
    [("conv_general_dilated", "conv_general_dilated_cls", ApproxConv)],
)
Einsum = _approx_module(
    nn.Einsum, "``flax.linen.Einsum`` with approximate products.", call=_einsum_call
)
ConvTranspose = _approx_module(
    nn.ConvTranspose,
    "``flax.linen.ConvTranspose`` with approximate products.",
    call=_conv_transpose_call,
)
MultiHeadDotProductAttention = _approx_module(
    nn.MultiHeadDotProductAttention,
    """``flax.linen.MultiHeadDotProductAttention`` with approximate projections and attention.

    The query/key/value and output projections and the two attention products
    (query-key logits and weights-value) all go through the multiplier.
    """,
    [
        ("qkv_dot_general", "qkv_dot_general_cls", ApproxDotGeneral),
        ("out_dot_general", "out_dot_general_cls", ApproxDotGeneral),
        (
            "qk_attn_weights_einsum_cls",
            "attn_weights_value_einsum_cls",
            lambda m: functools.partial(_einsum_fn, _Settings(m)),
        ),
        (
            "attn_weights_value_einsum_cls",
            "qk_attn_weights_einsum_cls",
            lambda m: functools.partial(_einsum_fn, _Settings(m)),
        ),
    ],
)
