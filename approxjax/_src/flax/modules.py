"""Drop-in Flax (linen) modules whose products go through a simulated multiplier.

``approxjax.Dense``, ``DenseGeneral``, ``Conv``, ``ConvTranspose``, ``Einsum`` and
``MultiHeadDotProductAttention`` are the ``flax.linen`` classes themselves,
subclassed: same constructor arguments, defaults, parameter names and shapes
(a checkpoint trained with plain Flax loads unchanged), plus these fields:

* ``multiplier``: ``"context"`` (default: the multiplier or policy of the
  innermost :func:`approxjax.using`, exact when there is none), a
  :class:`~approxjax.Multiplier`, a :class:`~approxjax.Policy`, or ``None``
  (exact);
* ``input_grad_multiplier`` and ``weight_grad_multiplier``: ``"forward"``, a
  Multiplier or None, as in :func:`approxjax.dot_general`;
* ``kernel_options``: :class:`~approxjax.KernelOptions` (how the kernels
  compute; None: the defaults);
* ``method``: ``"auto"``, ``"lut"`` or ``"native"`` (see
  :func:`approxjax.dot_general`), or None: each arithmetic's own.

They inject the approximate ops into Flax's own hooks (``dot_general``,
``conv_general_dilated``, the attention einsums); ``Einsum`` and
``ConvTranspose``, which have no hook, override ``__call__`` with Flax's own
implementation (same parameters, names and shapes) whose einsum / transposed
convolution is approximate. No module global of Flax is ever replaced, so
plain Flax code traced at the same time, on another thread, stays exact. In
attention, the query-key and attention-value products are approximate too.

The multiplier is chosen when the module is traced. With the default
``"context"`` a training step takes the multiplier as an argument and sets it
with ``approxjax.using``, so ``jax.vmap`` over a stack of multipliers trains
one model per multiplier in one program (see :mod:`approxjax.policy`).

NNX: ``approxjax.approximate(lambda x: model(x), multiplier)`` runs an
unmodified ``flax.nnx`` model with approximate products (see the README).
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import module as flax_module
from flax.linen.linear import canonicalize_padding
from jax import lax

from approxjax._src.arithmetic.arithmetic import Arithmetic
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.interpret.interpreter import conv_transpose as approx_conv_transpose
from approxjax._src.interpret.policy import (
    FORWARD,
    GemmMultipliers,
    Operation,
    Policy,
    choose_in_context,
    current_path,
    using,
)
from approxjax._src.ops.checks import INTEGER_KINDS
from approxjax._src.ops.conv import conv_general_dilated
from approxjax._src.ops.dot_general import dot_general

CONTEXT = "context"

# The approxjax layer whose __call__ is running (and how many of its GEMMs
# have asked for learned scales so far), for hooks that create parameters.
_CALLER: contextvars.ContextVar = contextvars.ContextVar("approxjax_layer", default=None)


# The names (and prefixes of the suffixed names) of learned quantization
# parameters.
_LEARNED = ("lhs_scale", "rhs_scale", "lhs_zero", "rhs_zero")


def _learned_scales(q, lhs, rhs, rhs_channel_axis: int | None):
    """``q`` with its learned scales as parameters of the calling layer:
    ``lhs_scale`` (a scalar) and ``rhs_scale`` (one per output channel, or a
    scalar), with ``lhs_zero``/``rhs_zero`` zero points of the same shapes
    on asymmetric sides (LSQ+), suffixed ``_1``, ``_2``... for the layer's
    later GEMMs, first set from the operands they first see, calibrated by
    their spec's ``initial``. ``q`` itself outside an approxjax layer or
    where the rhs is no weight (``rhs_channel_axis`` None): calibrated
    min-max."""
    from approxjax._src.arithmetic.quantization import calibrate

    caller = _CALLER.get()
    if caller is None or rhs_channel_axis is None:
        return q
    module, count = caller
    suffix = "" if count[0] == 0 else f"_{count[0]}"
    count[0] += 1

    def params(side, x, spec):
        """The side's scale and (asymmetric) zero point parameters, or Nones."""
        if spec.calibration != "learned":
            return None, None
        per_channel = spec.per_channel  # the rhs only (Quantized checks)
        axes = tuple(d for d in range(x.ndim) if not (per_channel and d == rhs_channel_axis))
        bits, signed = q.multiplier.bits[side], q.multiplier.signed[side]
        shape = (-1,) if per_channel else ()

        def initial(which):
            return lambda _: (
                calibrate(x, axes, bits, signed, spec)[which].reshape(shape).astype(jnp.float32)
            )

        name = ("lhs", "rhs")[side]
        scale = module.param(f"{name}_scale{suffix}", initial(0))
        zero = None if spec.symmetric else module.param(f"{name}_zero{suffix}", initial(1))
        return scale, zero

    sa, za = params(0, lhs, q.lhs)
    sb, zb = params(1, rhs, q.rhs)
    return q.with_scales(sa, sb, lhs_zero=za, rhs_zero=zb)


def calibrate_scales(model, params, batches, multiplier, *, rng=None):
    """``params`` with the learned-scale parameters of ``model``'s layers
    under ``multiplier`` (a :class:`~approxjax.Quantized`, or a Policy of
    them, with ``QuantSpec(calibration="learned")``) set from a calibration
    set: ``batches`` (an iterable of ``model.apply`` inputs) are joined
    along their leading axis and run as one, and each scale is calibrated
    over everything its layer sees, by its spec's ``initial``: min-max (the
    set's extreme values quantize without clipping), a percentile of the
    magnitudes, or the MSE-optimal clipping. Use them fixed (post-training
    quantization) or as the start of training. Other parameters are
    returned unchanged.

    Raises:
      ValueError: no batches, or no layer of ``model`` learns scales under
        ``multiplier``.
    """

    def scale(path) -> bool:
        return str(getattr(path[-1], "key", "")).startswith(_LEARNED)

    def without_scales(tree):
        if not isinstance(tree, dict):
            return tree
        return {k: without_scales(v) for k, v in tree.items()
                if not str(k).startswith(_LEARNED)}  # fmt: skip

    plain = without_scales(params)
    rng = jax.random.key(0) if rng is None else rng
    batches = list(batches)
    if not batches:
        raise ValueError("calibrate_scales needs at least one batch")
    joined = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *batches)
    with using(multiplier):
        _, best = model.apply(plain, joined, mutable=["params"], rngs={"params": rng})
    if not any(scale(path) for path, _ in jax.tree_util.tree_leaves_with_path(best)):
        raise ValueError(
            "no layer learns scales under this multiplier: give approxjax's Dense/Conv layers "
            "a Quantized with QuantSpec(calibration='learned')"
        )
    return best


def _dense_channel_axis(rhs, dimension_numbers) -> int | None:
    """The rhs's output-channel axis of a layer's dot_general (a weight:
    no batch dims, one free dim), else None."""
    (_, rhs_contract), (lhs_batch, _) = dimension_numbers
    free = [d for d in range(rhs.ndim) if d not in tuple(rhs_contract)]
    return free[0] if not lhs_batch and len(free) == 1 else None


def _learns(multiplier) -> bool:
    return getattr(multiplier, "learns_scales", False)


def resolve(multiplier: Any, input_grad: Any = FORWARD, weight_grad: Any = FORWARD):
    """The GemmMultipliers of an operation traced now, at the current module path."""
    if isinstance(multiplier, str) and multiplier == CONTEXT:
        return choose_in_context(current_path())
    if isinstance(multiplier, Policy):
        if multiplier.first_exact or multiplier.last_exact or multiplier.by_index:
            raise ValueError(
                "a module's own Policy chooses by path only; first_exact, last_exact and "
                "by_index need the whole model: pass the policy to approxjax.using(...) or "
                "approxjax.approximate(fn, policy)"
            )
        path = current_path()
        choice, _ = multiplier.choose(Operation(path, path))
        return choice
    if multiplier is None or isinstance(multiplier, (Multiplier, Arithmetic, *INTEGER_KINDS)):
        return GemmMultipliers(multiplier, input_grad, weight_grad)
    raise TypeError(
        "multiplier must be 'context', a Multiplier, an Arithmetic, an IntegerMultiplier, a "
        "Quantized, a Policy or None; "
        f"got {multiplier!r}"
    )


class _Settings:
    """A module's multiplier fields; compared by identity (never cached on)."""

    __slots__ = ("multiplier", "input_grad", "weight_grad", "options", "method")

    def __init__(self, module):
        self.multiplier = module.multiplier
        self.input_grad = module.input_grad_multiplier
        self.weight_grad = module.weight_grad_multiplier
        self.options = module.kernel_options
        self.method = module.method

    def choice(self) -> GemmMultipliers:
        return resolve(self.multiplier, self.input_grad, self.weight_grad)


class ApproxDotGeneral(_Settings):
    """A ``lax.dot_general``-compatible callable that reads the multiplier when traced."""

    def __call__(self, *args, **kwargs):
        return _ChosenDotGeneral(self.choice(), self.options, self.method)(*args, **kwargs)


class ApproxConv(_Settings):
    """A ``lax.conv_general_dilated``-compatible callable (see ApproxDotGeneral)."""

    def __call__(self, *args, **kwargs):
        c = self.choice()
        if c.exact:
            return lax.conv_general_dilated(*args, **kwargs)
        forward = c.forward
        if _learns(forward):
            lhs, rhs = args[0], args[1]
            dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, kwargs.get("dimension_numbers"))
            forward = _learned_scales(forward, lhs, rhs, dn.rhs_spec[0])
        return conv_general_dilated(
            *args,
            **kwargs,
            multiplier=forward,
            input_grad_multiplier=c.input_grad,
            weight_grad_multiplier=c.weight_grad,
            options=self.options,
            method=self.method,
        )


class _ChosenDotGeneral:
    """A ``lax.dot_general``-compatible callable with its multipliers already chosen."""

    def __init__(self, choice: GemmMultipliers, options=None, method=None):
        self.choice = choice
        self.options = options
        self.method = method

    def __call__(
        self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **unused
    ):
        c = self.choice
        if c.exact:
            return lax.dot_general(
                lhs,
                rhs,
                dimension_numbers,
                precision=precision,
                preferred_element_type=preferred_element_type,
            )
        forward = c.forward
        if _learns(forward):
            axis = _dense_channel_axis(rhs, dimension_numbers)
            forward = _learned_scales(forward, lhs, rhs, axis)
        return dot_general(
            lhs,
            rhs,
            dimension_numbers,
            precision,
            preferred_element_type,
            multiplier=forward,
            input_grad_multiplier=c.input_grad,
            weight_grad_multiplier=c.weight_grad,
            options=self.options,
            method=self.method,
        )


def _einsum_fn(settings: _Settings):
    """An einsum whose products go through the module's multipliers, chosen
    when it is called: before ``jnp.einsum``'s own jit, so the choice is made
    in the caller's trace. A fresh callable per call: ``jnp.einsum`` caches
    on its ``_dot_general`` argument."""

    def einsum(subscripts, *operands, **kwargs):
        kwargs.pop("precision", None)
        dot = _ChosenDotGeneral(settings.choice(), settings.options, settings.method)
        return jnp.einsum(subscripts, *operands, _dot_general=dot, **kwargs)

    return einsum


def _approx_module(base, doc: str, hooks=(), call=None):
    """``base`` with the three multiplier fields, and approximate ops in its hooks.

    ``hooks`` are ``(field, cls_field, make)``: when neither the user's field
    nor its ``*_cls`` counterpart is set, ``make(module)`` fills the field.
    ``call`` replaces ``__call__`` (modules without hooks).
    """

    def __post_init__(self):
        free = [getattr(self, f) is None and getattr(self, c) is None for f, c, _ in hooks]
        for (field, _, make), unset in zip(hooks, free, strict=True):
            if unset:
                object.__setattr__(self, field, make(self))
        base.__post_init__(self)

    # Learned scales belong to layers whose rhs is their own weight; inside
    # attention (whose projections are Flax's own layers) none are learned.
    owner = base in (nn.Dense, nn.DenseGeneral, nn.Conv)

    def __call__(self, *args, **kwargs):
        token = _CALLER.set((self, [0]) if owner else None)
        try:
            return base.__call__(self, *args, **kwargs)
        finally:
            _CALLER.reset(token)

    namespace = {
        "__module__": "approxjax.nn",
        "__qualname__": base.__name__,
        "__doc__": doc,
        "__annotations__": {
            "multiplier": Any,
            "input_grad_multiplier": Any,
            "weight_grad_multiplier": Any,
            "kernel_options": Any,
            "method": Any,
        },
        "multiplier": CONTEXT,
        "input_grad_multiplier": FORWARD,
        "weight_grad_multiplier": FORWARD,
        "kernel_options": None,
        "method": None,
        "__post_init__": __post_init__,
    }
    if call is not None:
        namespace["__call__"] = nn.compact(call)
    elif hooks:
        namespace["__call__"] = __call__
    return type(base.__name__, (base,), namespace)


def _einsum_call(self, inputs, einsum_str=None):
    """``flax.linen.Einsum.__call__`` (flax 0.12) with an approximate einsum."""
    einsum_str = flax_module.merge_param("einsum_str", self.einsum_str, einsum_str)
    einsum_str = einsum_str.replace(" ", "")
    if "->" not in einsum_str:
        raise ValueError('`einsum_str` equation must be explicit and include "->".')
    if einsum_str.count(",") != 1:
        raise ValueError(
            "`einsum_str` equation must have exactly two operands and therefore, exactly one "
            f"comma character, instead of {einsum_str.count(',')}"
        )
    kernel = self.param("kernel", self.kernel_init, self.shape, self.param_dtype)
    if self.use_bias:
        bias_shape, broadcasted_bias_shape = self._get_bias_shape(einsum_str, inputs, kernel)
        bias = self.param("bias", self.bias_init, bias_shape, self.param_dtype)
    else:
        bias = None
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = _einsum_fn(_Settings(self))(
        einsum_str, inputs, kernel, preferred_element_type=self.preferred_element_type
    )
    if bias is not None:
        y += jnp.reshape(bias, broadcasted_bias_shape)
    return y


def _conv_transpose_call(self, inputs):
    """``flax.linen.ConvTranspose.__call__`` (flax 0.12) with an approximate
    transposed convolution."""
    kernel_size = (
        (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    )

    def maybe_broadcast(x):
        if x is None:
            x = 1
        if isinstance(x, int):
            return (x,) * len(kernel_size)
        return tuple(x)

    num_batch_dimensions = inputs.ndim - (len(kernel_size) + 1)
    if num_batch_dimensions != 1:
        input_batch_shape = inputs.shape[:num_batch_dimensions]
        inputs = jnp.reshape(inputs, (-1,) + inputs.shape[num_batch_dimensions:])
    strides = maybe_broadcast(self.strides)
    kernel_dilation = maybe_broadcast(self.kernel_dilation)
    in_features = jnp.shape(inputs)[-1]
    if self.transpose_kernel:
        kernel_shape = kernel_size + (self.features, in_features)
    else:
        kernel_shape = kernel_size + (in_features, self.features)
    if self.mask is not None and self.mask.shape != kernel_shape:
        raise ValueError(
            "Mask needs to have the same shape as weights. "
            f"Shapes are: {self.mask.shape}, {kernel_shape}"
        )
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    if self.mask is not None:
        kernel *= self.mask
    padding_lax = canonicalize_padding(self.padding, len(kernel_size))
    if padding_lax == "CIRCULAR":
        padding_lax = "VALID"
    bias = (
        self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        if self.use_bias
        else None
    )
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    c = _Settings(self).choice()
    conv_kwargs = dict(
        rhs_dilation=kernel_dilation,
        transpose_kernel=self.transpose_kernel,
        precision=self.precision,
        preferred_element_type=self.preferred_element_type,
    )
    if c.exact:
        y = lax.conv_transpose(inputs, kernel, strides, padding_lax, **conv_kwargs)
    else:
        policy = Policy(c.forward, input_grad=c.input_grad, weight_grad=c.weight_grad)
        y = approx_conv_transpose(
            inputs,
            kernel,
            strides,
            padding_lax,
            multiplier=policy,
            options=_Settings(self).options,
            method=_Settings(self).method,
            **conv_kwargs,
        )
    if self.padding == "CIRCULAR":
        scaled_x_dims = [x * s for x, s in zip(jnp.shape(inputs)[1:-1], strides, strict=True)]
        size_diffs = [
            -(y_dim - x_dim) % (2 * x_dim)
            for y_dim, x_dim in zip(y.shape[1:-1], scaled_x_dims, strict=True)
        ]
        if self.transpose_kernel:
            total_pad = [(d // 2, (d + 1) // 2) for d in size_diffs]
        else:
            total_pad = [((d + 1) // 2, d // 2) for d in size_diffs]
        y = jnp.pad(y, [(0, 0)] + total_pad + [(0, 0)])
        for i in range(1, y.ndim - 1):
            y = y.reshape(y.shape[:i] + (-1, scaled_x_dims[i - 1]) + y.shape[i + 1 :])
            y = y.sum(axis=i)
    if bias is not None:
        y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    if num_batch_dimensions != 1:
        y = jnp.reshape(y, input_batch_shape + y.shape[1:])
    return y


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
