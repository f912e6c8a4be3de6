"""``approximate(fn, policy)``: run any JAX function with its products approximate.

The function is traced to a jaxpr (with the arguments of each call) and the
jaxpr is evaluated again with every ``dot_general`` and
``conv_general_dilated`` (which is what ``jnp.dot``, ``@``, ``jnp.einsum``,
``flax.linen.Dense``/``Conv``, ``flax.nnx.Linear``/``Conv``, Equinox layers and
attention lower to) replaced by approxjax's approximate ones, chosen by a
:class:`~approxjax.Policy`. Everything else is bound as it was traced. The
result works under ``jit``, ``grad`` and ``vmap`` like any JAX function; the
gradients of the replaced operations are approximate GEMMs too.

Sub-programs are followed: operations inside ``jit``-ed helpers and custom
derivative rules are inlined (the custom rule is then dropped in favour of the
approximate operations' own gradients); inside ``scan``, ``while`` and ``cond``
bodies they are replaced in place.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax import lax
from jax.extend import core as jex_core

from approxjax import conv as _conv
from approxjax import ops as _ops
from approxjax.multipliers import Multiplier
from approxjax.policy import Policy, as_policy

_TARGETS = ("dot_general", "conv_general_dilated")
_INLINE = (
    "pjit",
    "jit",
    "closed_call",
    "core_call",
    "remat",
    "checkpoint",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "custom_lin",
)


@dataclasses.dataclass
class OperationRecord:
    """One approximable operation as ``approximate`` saw it."""

    index: int
    kind: str
    path: str
    shapes: tuple[tuple[int, ...], ...]
    multiplier: str
    rule: str | None


def _closed_jaxprs(params: dict) -> list[tuple[str, Any]]:
    found = []
    for key, value in params.items():
        if isinstance(value, jex_core.ClosedJaxpr):
            found.append((key, value))
        elif (
            isinstance(value, (tuple, list))
            and value
            and all(isinstance(v, jex_core.ClosedJaxpr) for v in value)
        ):
            found.append((key, tuple(value)))
    return found


def _count(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _TARGETS:
            total += 1
        for _, sub in _closed_jaxprs(eqn.params):
            for closed in sub if isinstance(sub, tuple) else (sub,):
                total += _count(closed.jaxpr)
    return total


def _join(prefix: str, stack: str) -> str:
    return "/".join(p for p in (prefix, stack) if p)


class _Interpreter:
    def __init__(self, policy: Policy, total: int):
        self.policy = policy
        self.total = total
        self.index = 0
        self.records: list[OperationRecord] = []
        self.used_rules: set[str] = set()

    def _choose(self, kind, path, shapes):
        choice, rule = self.policy.choose(path, self.index, self.total)
        if rule is not None:
            self.used_rules.add(rule)
        name = "exact" if choice.forward is None else choice.forward.name
        self.records.append(OperationRecord(self.index, kind, path, shapes, name, rule))
        self.index += 1
        return choice

    def eval(self, jaxpr, consts, args, prefix: str = ""):
        env: dict[Any, Any] = {}

        def read(v):
            return v.val if isinstance(v, jex_core.Literal) else env[v]

        for v, val in zip(jaxpr.constvars, consts, strict=True):
            env[v] = val
        for v, val in zip(jaxpr.invars, args, strict=True):
            env[v] = val
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            path = _join(prefix, str(eqn.source_info.name_stack))
            outvals = self._eqn(eqn, invals, path)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
            for v, val in zip(eqn.outvars, outvals, strict=True):
                env[v] = val
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn, invals, path):
        name = eqn.primitive.name
        p = eqn.params
        if name == "dot_general":
            choice = self._choose(name, path, tuple(tuple(x.shape) for x in invals))
            if choice.exact:
                return self._bind(eqn, invals)
            return _ops.dot_general(
                *invals,
                p["dimension_numbers"],
                preferred_element_type=p.get("preferred_element_type"),
                multiplier=choice.forward,
                input_grad_multiplier=choice.input_grad,
                weight_grad_multiplier=choice.weight_grad,
            )
        if name == "conv_general_dilated":
            choice = self._choose(name, path, tuple(tuple(x.shape) for x in invals))
            if choice.exact:
                return self._bind(eqn, invals)
            return _conv.conv_general_dilated(
                *invals,
                p["window_strides"],
                p["padding"],
                p["lhs_dilation"],
                p["rhs_dilation"],
                p["dimension_numbers"],
                p["feature_group_count"],
                p["batch_group_count"],
                preferred_element_type=p.get("preferred_element_type"),
                multiplier=choice.forward,
                input_grad_multiplier=choice.input_grad,
                weight_grad_multiplier=choice.weight_grad,
            )
        subs = _closed_jaxprs(p)
        if not subs or not any(
            _count(c.jaxpr) for _, s in subs for c in (s if isinstance(s, tuple) else (s,))
        ):
            return self._bind(eqn, invals)
        if name in _INLINE:
            key, closed = next((k, s) for k, s in subs if k in ("jaxpr", "call_jaxpr", "fun_jaxpr"))
            n_in = len(closed.jaxpr.invars)
            out = self.eval(closed.jaxpr, closed.consts, invals[len(invals) - n_in :], path)
            return out if eqn.primitive.multiple_results else out[0]
        # Control flow (scan, while, cond, ...): rebuild its bodies, then bind.
        new_params = dict(p)
        for key, sub in subs:
            if isinstance(sub, tuple):
                new_params[key] = tuple(self._transform(c, path) for c in sub)
            else:
                new_params[key] = self._transform(sub, path)
        return self._bind(eqn, invals, new_params)

    def _transform(self, closed, path):
        avals = [v.aval for v in closed.jaxpr.invars]
        start = self.index

        def body(*args):
            self.index = start
            return self.eval(closed.jaxpr, closed.consts, args, path)

        return jax.make_jaxpr(body)(*[jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals])

    @staticmethod
    def _bind(eqn, invals, params=None):
        # As jax.core.eval_jaxpr does it (jax 0.10/0.11).
        bind_params = eqn.primitive.get_bind_params(eqn.params if params is None else params)
        with eqn.ctx.manager:
            return eqn.primitive.bind(*invals, **bind_params)


def approximate(
    fn: Callable[..., Any],
    multiplier_or_policy: Multiplier | Policy | None,
    *,
    static_argnums: int | Sequence[int] = (),
    report: list[OperationRecord] | None = None,
) -> Callable[..., Any]:
    """Wraps ``fn`` so that its dot_general and convolution products are approximate.

    Args:
      fn: any JAX function (a ``flax.linen`` model's ``apply``, an NNX or
        Equinox model call, plain ``jnp`` code).
      multiplier_or_policy: one Multiplier for every operation, a
        :class:`~approxjax.Policy`, or None (exact: useful with ``report``).
      static_argnums: arguments that are not arrays (flags such as ``train``).
      report: a list that each call extends with one :class:`OperationRecord`
        per operation (path, shapes, chosen multiplier): to check a policy.

    Returns:
      A function with ``fn``'s signature.

    Raises:
      ValueError: (when called) a policy pattern matched no operation, or an
        index names an operation that does not exist.
    """
    policy = as_policy(multiplier_or_policy)
    static = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        dynamic = [i for i in range(len(args)) if i not in static]
        flat, tree = jax.tree_util.tree_flatten(([args[i] for i in dynamic], kwargs))

        def flat_fn(*leaves):
            dyn, kw = jax.tree_util.tree_unflatten(tree, leaves)
            full = list(args)
            for i, value in zip(dynamic, dyn, strict=True):
                full[i] = value
            return fn(*full, **kw)

        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*flat)
        total = _count(closed.jaxpr)
        policy.check_indices(total)
        interp = _Interpreter(policy, total)
        out = interp.eval(closed.jaxpr, closed.consts, flat)
        policy.check_rules_used(interp.used_rules, [r.path for r in interp.records])
        if report is not None:
            report.extend(interp.records)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)

    return wrapped


def einsum(subscripts: str, *operands, multiplier: Multiplier | Policy | None, **kwargs):
    """``jnp.einsum`` with its products approximate (through :func:`approximate`)."""
    import jax.numpy as jnp

    return approximate(lambda *ops: jnp.einsum(subscripts, *ops, **kwargs), multiplier)(*operands)


def conv_transpose(lhs, rhs, strides, padding, *, multiplier: Multiplier | Policy | None, **kw):
    """``lax.conv_transpose`` with its products approximate (through :func:`approximate`)."""
    return approximate(lambda a, b: lax.conv_transpose(a, b, strides, padding, **kw), multiplier)(
        lhs, rhs
    )
