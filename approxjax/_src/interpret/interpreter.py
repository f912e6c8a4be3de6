"""``approximate(fn, policy)``: run any JAX function with its products approximate.

The function is traced to a jaxpr (with the arguments of each call) and the
jaxpr is evaluated again with every ``dot_general`` and
``conv_general_dilated`` (which is what ``jnp.dot``, ``@``, ``jnp.einsum``,
``flax.linen.Dense``/``Conv``, ``flax.nnx.Linear``/``Conv``, Equinox layers and
attention lower to) replaced by approxjax's approximate ones, chosen by a
:class:`~approxjax.Policy`. Everything else is bound as it was traced. The
result works under ``jit``, ``grad`` and ``vmap`` like any JAX function; the
gradients of the replaced operations are approximate GEMMs too.

Sub-programs are followed. Operations inside ``jit``-ed helpers and custom
derivative rules are inlined (the custom rule is then dropped in favour of the
approximate operations' own gradients). ``scan``, ``while_loop``, ``cond`` /
``switch``, ``checkpoint`` (remat) and ``shard_map`` are rebuilt with the
public JAX function of the same name around the interpreted body, so a
traced multiplier (an argument of a jitted function, or a vmapped stack) is
closed over by JAX's own rules. A sub-program of another kind is bound
unchanged: its operations stay exact, and the report says so. So do products
the model cannot simulate (integer or float64 operands).

Each operation is named by the module that owns it: the attribute path of
its weight operand in the function's arguments (``conv1``,
``blocks/0/attn/query`` for Flax NNX or Equinox models; the parameter's own
name and NNX's ``.value`` are dropped), or, for products of two activations
(attention), the common module of the operations that produced them
(``blocks/0/attn``). Where JAX's name scope names the same module (Flax
linen: ``Model/Dense_0`` for the parameters ``params/Dense_0``), or nothing
else is known, the path is the name scope. Policies match rules against the
path and against the name scope.

Arguments that are not arrays (Python numbers, strings, callables, an Equinox
module's static fields) are passed through as static data, as
``equinox.filter_jit`` does.

Constants closed over by ``fn`` (parameters captured in a closure instead of
passed as arguments) are visible to XLA, which may fold computations on them
at compile time in a different rounding than at run time (a normalisation's
``rsqrt`` one ulp away, say), and a 7-bit table amplifies such differences:
pass parameters as arguments when results are compared across runs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

from approxjax._src.arithmetic.arithmetic import check_method, salted
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.interpret.policy import GemmMultipliers, Operation, Policy, as_policy
from approxjax._src.kernels.options import KernelOptions, check_options
from approxjax._src.ops.conv import conv_general_dilated
from approxjax._src.ops.dot_general import dot_general

_TARGETS = ("dot_general", "conv_general_dilated")
_INLINE = (
    "pjit",
    "jit",
    "closed_call",
    "core_call",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "custom_lin",
)
_REBUILT = ("scan", "while", "cond", "remat2", "checkpoint", "shard_map")
# Primitives that only move or relabel data: an operand seen through them is
# still "the same input" (first-layer siblings share it).
_SHAPE_ONLY = (
    "reshape",
    "transpose",
    "convert_element_type",
    "broadcast_in_dim",
    "squeeze",
    "expand_dims",
    "copy",
    "copy_p",
)
_FLOAT_DTYPES = tuple(jnp.dtype(d) for d in (jnp.float32, jnp.bfloat16, jnp.float16))
# Trailing attributes of a parameter leaf that are not module names.
_VALUE_KEYS = ("value", "raw_value", "_value")


@dataclasses.dataclass
class OperationRecord:
    """One approximable operation as ``approximate`` saw it.

    Attributes:
      index: position in program order (0-based, sub-programs included).
      kind: ``"dot_general"`` or ``"conv_general_dilated"``.
      path: the module that owns it (see the module docstring).
      scope: JAX's name scope where it was traced.
      shapes: its operands' shapes.
      multiplier: the forward multiplier's name, or ``"exact"``.
      rule: what chose it: a rule's pattern, ``"first_exact"``,
        ``"last_exact"``, ``"by_index"`` or None (the default).
      note: why it was left exact without a rule choosing it (integer
        operands, an unsupported sub-program), or None.
    """

    index: int
    kind: str
    path: str
    scope: str
    shapes: tuple[tuple[int, ...], ...]
    multiplier: str
    rule: str | None
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class _Origin:
    """What a value in the program derives from: the data (some argument that
    is not a parameter), parameters only (their layer paths), and the
    approximable operations nearest upstream (their paths); ``root`` is the
    value it is a reshape/transpose/cast of."""

    data: bool
    params: frozenset = frozenset()
    ops: frozenset = frozenset()
    root: Any = None


_CONSTANT = _Origin(False)


@dataclasses.dataclass
class _Op:
    index: int
    key: tuple
    kind: str
    path: str
    scope: str
    shapes: tuple
    note: str | None
    data_root: Any


def _common_prefix(paths) -> str:
    parts = [p.split("/") for p in paths if p]
    if not parts:
        return ""
    common = []
    for names in zip(*parts, strict=False):
        if len(set(names)) != 1:
            break
        common.append(names[0])
    return "/".join(common)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaf_layer(path: tuple) -> str | None:
    """The module path of a parameter leaf: its key path below the argument,
    without the parameter's own name (and NNX's ``.value``); None for a
    leaf directly at an argument (data)."""
    names = [_key_name(k) for k in path[2:]]  # drop (args | kwargs, position | name)
    while names and names[-1] in _VALUE_KEYS:
        names.pop()
    if len(names) < 2:
        return None
    return "/".join(names[:-1])


def _subprograms(eqn) -> list[tuple[str, int | None, Any, Sequence, list[int]]]:
    """Every sub-program of an equation: (param, branch, open jaxpr, consts,
    the equation operands that feed its inputs)."""
    name, p, n = eqn.primitive.name, eqn.params, len(eqn.invars)
    if name == "while":
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        carry = list(range(cn + bn, n))
        cj, bj = p["cond_jaxpr"], p["body_jaxpr"]
        return [
            ("cond_jaxpr", None, cj.jaxpr, cj.consts, list(range(cn)) + carry),
            ("body_jaxpr", None, bj.jaxpr, bj.consts, list(range(cn, cn + bn)) + carry),
        ]
    if name == "cond":
        return [
            ("branches", i, br.jaxpr, br.consts, list(range(1, n)))
            for i, br in enumerate(p["branches"])
        ]
    found = []
    for key, value in p.items():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for i, item in enumerate(items):
            if isinstance(item, jex_core.ClosedJaxpr):
                jaxpr, consts = item.jaxpr, item.consts
            elif isinstance(item, jex_core.Jaxpr):
                jaxpr, consts = item, ()
            else:
                continue
            k = len(jaxpr.invars)
            operands = list(range(n - k, n)) if k <= n else []
            found.append(
                (key, i if isinstance(value, (tuple, list)) else None, jaxpr, consts, operands)
            )
    return found


class _Analysis:
    """One pass over the program: every approximable operation in program
    order, with its path, first/last-layer membership and whether it can be
    simulated; and which sub-programs hold any."""

    def __init__(self, jaxpr, leaf_layers: Sequence[str | None]):
        self.ops: list[_Op] = []
        self.by_key: dict[tuple, _Op] = {}
        self.has_targets: dict[tuple, bool] = {}
        origins = [
            _Origin(True, root=object()) if layer is None else _Origin(False, frozenset({layer}))
            for layer in leaf_layers
        ]
        self._visit(jaxpr, [_CONSTANT] * len(jaxpr.constvars), origins, (), "", None)

    def _visit(self, jaxpr, const_origins, in_origins, key, scope, unsupported) -> list[_Origin]:
        env: dict[Any, _Origin] = {}
        for v, o in zip(jaxpr.constvars, const_origins, strict=True):
            env[v] = o
        for v, o in zip(jaxpr.invars, in_origins, strict=True):
            env[v] = o

        def read(v):
            return _CONSTANT if isinstance(v, jex_core.Literal) else env.get(v, _CONSTANT)

        start = len(self.ops)
        for i, eqn in enumerate(jaxpr.eqns):
            ins = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            here = "/".join(x for x in (scope, str(eqn.source_info.name_stack)) if x)
            data = any(o.data for o in ins)
            if name in _TARGETS:
                op = self._add(eqn, key + (i,), ins, here, unsupported)
                outs = [_Origin(data, ops=frozenset({op.path} if op.path else ()), root=object())]
            elif name in _SHAPE_ONLY and ins:
                o = ins[0]
                outs = [_Origin(o.data, o.params, o.ops, o.root)]
            else:
                subs = _subprograms(eqn)
                sub_outs = None
                inner = unsupported
                if subs and unsupported is None and name not in _INLINE + _REBUILT:
                    inner = f"inside a {name} sub-program, which approximate() cannot rebuild"
                for param, branch, sub, _, operands in subs:
                    sub_key = key + (i, param, branch)
                    before = len(self.ops)
                    sub_in = (
                        [ins[j] for j in operands]
                        if len(operands) == len(sub.invars)
                        else [_Origin(data, root=object())] * len(sub.invars)
                    )
                    got = self._visit(
                        sub, [_CONSTANT] * len(sub.constvars), sub_in, sub_key, here, inner
                    )
                    self.has_targets[sub_key] = len(self.ops) > before
                    if sub_outs is None and len(got) == len(eqn.outvars):
                        sub_outs = got
                if sub_outs is not None:
                    outs = sub_outs
                else:
                    params = (
                        frozenset().union(*(o.params for o in ins)) if not data else frozenset()
                    )
                    nearest = frozenset().union(*(o.ops for o in ins if o.data))
                    outs = [_Origin(data, params, nearest, object())] * len(eqn.outvars)
            if len(outs) == 1 and len(eqn.outvars) > 1:
                outs = outs * len(eqn.outvars)
            for v, o in zip(eqn.outvars, outs, strict=False):
                env[v] = o
        self.has_targets[key] = len(self.ops) > start
        return [read(v) for v in jaxpr.outvars]

    def _add(self, eqn, key, ins, scope, unsupported) -> _Op:
        weights = [o.params for o in ins if not o.data and o.params]
        if weights:
            path = _common_prefix(frozenset().union(*weights))
        else:
            path = _common_prefix(frozenset().union(*(o.ops for o in ins if o.data)))
        # Flax linen names its modules in the name scope ("Model/Dense_0"): where
        # the scope names the same module as the parameters, keep its fuller path.
        if not path or (scope and scope.split("/")[-1] == path.split("/")[-1]):
            path = scope
        note = unsupported
        dtypes = [jnp.dtype(v.aval.dtype) for v in eqn.invars]
        if note is None and any(d not in _FLOAT_DTYPES for d in dtypes):
            names = " x ".join(str(d) for d in dtypes)
            note = f"{names} operands: only float32/bfloat16/float16 products are simulated"
        data_roots = [o.root for o in ins if o.data]
        op = _Op(
            index=len(self.ops),
            key=key,
            kind=eqn.primitive.name,
            path=path,
            scope=scope,
            shapes=tuple(tuple(v.aval.shape) for v in eqn.invars),
            note=note,
            data_root=data_roots[0] if len(data_roots) == 1 else None,
        )
        self.ops.append(op)
        self.by_key[key] = op
        return op

    def layers(self) -> tuple[set[int], set[int]]:
        """Indices of the operations in the first and in the last layer."""
        live = [op for op in self.ops if op.note is None]
        if not live:
            return set(), set()
        first, last = live[0], live[-1]
        in_first = {
            op.index
            for op in live
            if op.path == first.path
            or (first.data_root is not None and op.data_root is first.data_root)
        }
        in_last = {op.index for op in live if op.path == last.path}
        return in_first, in_last


class _Evaluator:
    """Evaluates a program with the chosen operations replaced."""

    def __init__(
        self,
        analysis: _Analysis,
        choices: dict[tuple, GemmMultipliers],
        options: KernelOptions | None,
        method: str | None = None,
    ):
        self.analysis = analysis
        self.choices = choices
        self.options = options
        self.method = method

    def eval(self, jaxpr, consts, args, key=()):
        env: dict[Any, Any] = {}

        def read(v):
            return v.val if isinstance(v, jex_core.Literal) else env[v]

        for v, val in zip(jaxpr.constvars, consts, strict=True):
            env[v] = val
        for v, val in zip(jaxpr.invars, args, strict=True):
            env[v] = val
        for i, eqn in enumerate(jaxpr.eqns):
            invals = [read(v) for v in eqn.invars]
            outvals = self._eqn(eqn, invals, key + (i,))
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
            for v, val in zip(eqn.outvars, outvals, strict=True):
                env[v] = val
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn, invals, key):
        name = eqn.primitive.name
        if name in _TARGETS:
            choice = self.choices.get(key)
            if choice is None or choice.exact:
                return _bind(eqn, invals)
            return _approximate_op(eqn, invals, choice, self.options, self.method)
        subs = _subprograms(eqn)
        if not subs or not any(self.analysis.has_targets.get(key + (s[0], s[1])) for s in subs):
            return _bind(eqn, invals)
        if name in _INLINE:
            param, branch, sub, consts, operands = next(
                (s for s in subs if s[0] in ("jaxpr", "call_jaxpr", "fun_jaxpr")), subs[0]
            )
            out = self.eval(sub, consts, [invals[j] for j in operands], key + (param, branch))
            return out if eqn.primitive.multiple_results else out[0]
        rebuild = getattr(self, f"_rebuild_{name}", None)
        if rebuild is None:  # left exact (the analysis noted why)
            return _bind(eqn, invals)
        return rebuild(eqn, invals, key, subs)

    def _body(self, sub, consts, key):
        return lambda *args: self.eval(sub, consts, list(args), key)

    def _rebuild_scan(self, eqn, invals, key, subs):
        p = eqn.params
        nc, ncarry = p["num_consts"], p["num_carry"]
        consts, init, xs = invals[:nc], invals[nc : nc + ncarry], invals[nc + ncarry :]
        param, branch, sub, sub_consts, _ = subs[0]
        body = self._body(sub, sub_consts, key + (param, branch))

        def step(carry, x):
            out = body(*consts, *carry, *x)
            return out[:ncarry], out[ncarry:]

        carry, ys = lax.scan(
            step, list(init), list(xs), length=p["length"], reverse=p["reverse"], unroll=p["unroll"]
        )
        return [*carry, *ys]

    def _rebuild_while(self, eqn, invals, key, subs):
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cconsts, bconsts, init = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
        (cp, cb, cj, cc, _), (bp, bb, bj, bc, _) = subs
        cond = self._body(cj, cc, key + (cp, cb))
        body = self._body(bj, bc, key + (bp, bb))
        return lax.while_loop(
            lambda c: cond(*cconsts, *c)[0], lambda c: body(*bconsts, *c), list(init)
        )

    def _rebuild_cond(self, eqn, invals, key, subs):
        index, operands = invals[0], invals[1:]
        branches = [self._body(sub, consts, key + (param, b)) for param, b, sub, consts, _ in subs]
        return lax.switch(index, branches, *operands)

    def _rebuild_remat2(self, eqn, invals, key, subs):
        p = eqn.params
        param, branch, sub, consts, _ = subs[0]
        body = self._body(sub, consts, key + (param, branch))
        return jax.checkpoint(body, prevent_cse=p["prevent_cse"], policy=p["policy"])(*invals)

    _rebuild_checkpoint = _rebuild_remat2

    def _rebuild_shard_map(self, eqn, invals, key, subs):
        p = eqn.params
        param, branch, sub, consts, _ = subs[0]
        body = self._body(sub, consts, key + (param, branch))
        mapped = jax.shard_map(
            lambda *a: tuple(body(*a)),
            mesh=p["mesh"],
            in_specs=tuple(p["in_specs"]),
            out_specs=tuple(p["out_specs"]),
            check_vma=p["check_vma"],
            axis_names=set(p["newly_manual_axes"]),
        )
        return list(mapped(*invals))


def _approximate_op(
    eqn, invals, choice: GemmMultipliers, options: KernelOptions | None, method: str | None
):
    p = eqn.params
    grads = dict(
        multiplier=choice.forward,
        input_grad_multiplier=choice.input_grad,
        weight_grad_multiplier=choice.weight_grad,
        options=options,
        method=method,
    )
    if eqn.primitive.name == "dot_general":
        return dot_general(
            *invals,
            p["dimension_numbers"],
            preferred_element_type=p.get("preferred_element_type"),
            **grads,
        )
    return conv_general_dilated(
        *invals,
        p["window_strides"],
        p["padding"],
        p["lhs_dilation"],
        p["rhs_dilation"],
        p["dimension_numbers"],
        p["feature_group_count"],
        p["batch_group_count"],
        preferred_element_type=p.get("preferred_element_type"),
        **grads,
    )


def _bind(eqn, invals, params=None):
    # As jax.core.eval_jaxpr does it (jax 0.10/0.11).
    bind_params = eqn.primitive.get_bind_params(eqn.params if params is None else params)
    with eqn.ctx.manager:
        return eqn.primitive.bind(*invals, **bind_params)


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _choose(policy: Policy, analysis: _Analysis):
    """The choice of every operation and the records of the report."""
    in_first, in_last = analysis.layers()
    choices, records, used = {}, [], set()
    for op in analysis.ops:
        if op.note is not None:
            choice, rule = GemmMultipliers(None), None
        else:
            choice, rule = policy.choose(
                Operation(op.path, op.scope, op.index, op.index in in_first, op.index in in_last)
            )
        if rule is not None:
            used.add(rule)
        if op.index is not None:  # independent stochastic rounding per operation
            choice = dataclasses.replace(
                choice,
                forward=salted(choice.forward, op.index),
                input_grad=salted(choice.input_grad, op.index),
                weight_grad=salted(choice.weight_grad, op.index),
            )
        choices[op.key] = choice
        name = "exact" if choice.forward is None else choice.forward.name
        records.append(
            OperationRecord(op.index, op.kind, op.path, op.scope, op.shapes, name, rule, op.note)
        )
    return choices, records, used


def approximate(
    fn: Callable[..., Any],
    multiplier_or_policy: Multiplier | Policy | None,
    *,
    static_argnums: int | Sequence[int] = (),
    report: list[OperationRecord] | None = None,
    options: KernelOptions | None = None,
    method: str | None = None,
) -> Callable[..., Any]:
    """Wraps ``fn`` so that its dot_general and convolution products are approximate.

    Args:
      fn: any JAX function (a ``flax.linen`` model's ``apply``, an NNX or
        Equinox model call, plain ``jnp`` code).
      multiplier_or_policy: one Multiplier for every operation, a
        :class:`~approxjax.Policy`, or None (exact: useful with ``report``).
      static_argnums: positional arguments passed through as static data even
        where they are arrays (non-array leaves always are).
      report: a list that each trace extends with one :class:`OperationRecord`
        per operation (path, shapes, chosen multiplier, why it was left
        exact): to check a policy. Under ``jit`` it is extended when the
        function is traced, not on every call.
      options: how the kernels compute (:class:`~approxjax.KernelOptions`).
      method: ``"auto"``, ``"lut"`` or ``"native"`` for every operation (see
        :func:`approxjax.dot_general`); None: each arithmetic's own (a policy
        that maps layers to ``Arithmetic(..., method=...)`` sets it per layer).

    Returns:
      A function with ``fn``'s signature.

    Raises:
      ValueError: (when called) a policy pattern matched no operation, or an
        index names an operation that does not exist.
    """
    policy = as_policy(multiplier_or_policy)
    options = check_options(options)
    method = check_method(method)
    static = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        leaves, tree = jax.tree_util.tree_flatten_with_path((args, kwargs))
        dynamic = [
            i
            for i, (path, leaf) in enumerate(leaves)
            if _is_array(leaf) and not (_key_name(path[0]) == "0" and path[1].idx in static)
        ]
        values = [leaf for _, leaf in leaves]

        def flat_fn(*dyn):
            full = list(values)
            for i, value in zip(dynamic, dyn, strict=True):
                full[i] = value
            a, kw = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure((args, kwargs)), full)
            return fn(*a, **kw)

        flat = [values[i] for i in dynamic]
        closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(*flat)
        analysis = _Analysis(closed.jaxpr, [_leaf_layer(leaves[i][0]) for i in dynamic])
        policy.check_indices(len(analysis.ops))
        choices, records, used = _choose(policy, analysis)
        policy.check_rules_used(used, [r.path for r in records] + [r.scope for r in records])
        evaluator = _Evaluator(analysis, choices, options, method)
        out = evaluator.eval(closed.jaxpr, closed.consts, flat)
        if report is not None:
            report.extend(records)
        del tree
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)

    return wrapped


def einsum(subscripts: str, *operands, multiplier: Multiplier | Policy | None, **kwargs):
    """``jnp.einsum`` with its products approximate (through :func:`approximate`)."""
    return approximate(lambda *ops: jnp.einsum(subscripts, *ops, **kwargs), multiplier)(*operands)


def conv_transpose(
    lhs,
    rhs,
    strides,
    padding,
    *,
    multiplier: Multiplier | Policy | None,
    options: KernelOptions | None = None,
    method: str | None = None,
    **kw,
):
    """``lax.conv_transpose`` with its products approximate (through :func:`approximate`)."""
    return approximate(
        lambda a, b: lax.conv_transpose(a, b, strides, padding, **kw),
        multiplier,
        options=options,
        method=method,
    )(lhs, rhs)
