"""Which multiplier each operation uses: policies, and the ``using`` context.

A :class:`Policy` chooses, for every approximable operation (a dot_general or a
convolution, forward pass and both gradients), a forward multiplier and the
two gradient multipliers:

* ``first_exact`` / ``last_exact``: the operations of the first / last
  *layer* are exact (the usual choice for the input and classifier layers).
  A layer is a module: every operation whose path is that of the first (last)
  operation, and, for the first layer, every operation that reads the same
  input as the first one (a transformer's query, key and value projections of
  its input embeddings);
* by **order of appearance**: ``by_index={0: None}`` (0-based, in program order);
* by **path**: regular expressions searched in the operation's path (the
  module that owns it: ``"conv1"``, ``"blocks/0/attn/query"``,
  ``"params/Dense_0"``) and in its JAX name scope (``"LeNet/Conv_0"``); the
  first rule that matches wins;
* otherwise the ``default``.

A multiplier given as ``None`` means exact float32. Every rule must match at
least one operation: a pattern that matches nothing raises (a typo, usually).
Policies are pytrees (the multipliers' tables are leaves), so a training step
can take one as an argument, and ``jax.vmap`` over a policy built from a stack
of multipliers sweeps them.

``with approxjax.using(multiplier_or_policy): ...`` makes a policy current
while a function is traced; approxjax's Flax modules (with their default
``multiplier="context"``) read it, so an unmodified training loop gets its
multiplier as data::

    def train_step(state, batch, multiplier):
        with approxjax.using(multiplier):
            ...  # loss, grads through state.apply_fn

    jax.jit(jax.vmap(train_step, in_axes=(0, None, 0)))(states, batch, stack)

A concrete multiplier set with ``using`` *outside* a ``jax.jit`` (or a
``scan``, ``while_loop``, ``cond``, ``checkpoint``) that is traced inside the
block would be baked into the compiled program as a constant, and calling that
program again under another multiplier would silently compute the first one:
approxjax raises :class:`ContextTraceError` instead, with the fix (pass the
multiplier as an argument of the jitted function and enter ``using`` inside
it).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from approxjax._src.arithmetic.arithmetic import Arithmetic
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.ops.checks import FORWARD, INTEGER_KINDS, check_choice


@dataclasses.dataclass(frozen=True)
class GemmMultipliers:
    """The multipliers of one GEMM: forward, input gradient, weight gradient.

    ``input_grad`` and ``weight_grad`` are a Multiplier, ``None`` (exact) or
    ``"forward"`` (the forward multiplier). ``forward=None`` makes the whole
    operation exact.
    """

    forward: Multiplier | None
    input_grad: Any = FORWARD
    weight_grad: Any = FORWARD

    @property
    def exact(self) -> bool:
        return self.forward is None


@dataclasses.dataclass(frozen=True)
class Operation:
    """What a policy knows of one operation when it chooses its multipliers.

    Attributes:
      path: the module (layer) that owns the operation.
      scope: JAX's name scope where it was traced (Flax linen module paths).
      index: its 0-based position in program order, where known.
      in_first_layer, in_last_layer: whether it belongs to the first / last layer.
    """

    path: str
    scope: str = ""
    index: int | None = None
    in_first_layer: bool = False
    in_last_layer: bool = False


@jax.tree_util.register_pytree_node_class
class Policy:
    """A rule set choosing each operation's multipliers (see the module docstring).

    Args:
      default: multiplier of operations no rule chooses (None: exact).
      rules: ``(pattern, multiplier)`` pairs, or a mapping; ``re.search`` on the
        operation's path and on its name scope, first match wins.
      by_index: ``{index: multiplier}`` by order of appearance (0-based).
      first_exact, last_exact: make the first / last layer exact.
      default, rules, by_index: a Multiplier, an :class:`~approxjax.Arithmetic`
        or None wherever a multiplier is named.
      input_grad, weight_grad: gradient multipliers of every approximate
        operation: ``"forward"``, a Multiplier or Arithmetic, or None (exact).
        The gradient GEMMs keep their operands' order: the input gradient is
        ``g @ W.T`` (lhs the output gradient g, rhs the weights), the weight
        gradient ``x.T @ g`` (lhs the activations, rhs g). The FP8 recipe
        (E4M3 forward, E5M2 gradients) is ``Policy(Arithmetic(lhs="e4m3",
        rhs="e4m3"), input_grad=Arithmetic(lhs="e5m2", rhs="e4m3"),
        weight_grad=Arithmetic(lhs="e4m3", rhs="e5m2"))``.

    Raises:
      ValueError: a pattern is not a valid regular expression, or an index is
        negative.
      TypeError: a multiplier is not a Multiplier, None or "forward".

    Example::

      >>> import approxjax as ax
      >>> policy = ax.Policy(ax.mitchell(7), rules=[("Dense_2", None)], first_exact=True)
    """

    def __init__(
        self,
        default: Multiplier | None = None,
        *,
        rules: Sequence[tuple[str, Multiplier | None]] | Mapping[str, Multiplier | None] = (),
        by_index: Mapping[int, Multiplier | None] | None = None,
        first_exact: bool = False,
        last_exact: bool = False,
        input_grad: Any = FORWARD,
        weight_grad: Any = FORWARD,
    ):
        rules = tuple(rules.items()) if isinstance(rules, Mapping) else tuple(rules)
        for rule in rules:
            if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)):
                raise TypeError(f"rules are (pattern, multiplier) pairs; got {rule!r}")
            try:
                re.compile(rule[0])
            except re.error as e:
                raise ValueError(
                    f"rule pattern {rule[0]!r} is not a regular expression: {e}"
                ) from e
            check_choice(f"multiplier of rule {rule[0]!r}", rule[1], False)
        by_index = dict(by_index or {})
        for k, v in by_index.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ValueError(f"by_index keys are operation indices >= 0; got {k!r}")
            check_choice(f"by_index[{k}]", v, False)
        check_choice("default", default, False)
        check_choice("input_grad", input_grad, True)
        check_choice("weight_grad", weight_grad, True)
        self.default = default
        self.rules = rules
        self.by_index = by_index
        self.first_exact = bool(first_exact)
        self.last_exact = bool(last_exact)
        self.input_grad = input_grad
        self.weight_grad = weight_grad

    def choose(self, op: Operation | str) -> tuple[GemmMultipliers, str | None]:
        """The GemmMultipliers of an operation, and the rule that chose it
        (a pattern, ``"first_exact"``, ``"last_exact"``, ``"by_index"`` or None)."""
        if isinstance(op, str):
            op = Operation(op, op)
        rule = None
        if self.first_exact and op.in_first_layer:
            forward, rule = None, "first_exact"
        elif self.last_exact and op.in_last_layer:
            forward, rule = None, "last_exact"
        elif op.index is not None and op.index in self.by_index:
            forward, rule = self.by_index[op.index], "by_index"
        else:
            forward = self.default
            for pattern, mult in self.rules:
                if re.search(pattern, op.path) or (op.scope and re.search(pattern, op.scope)):
                    forward, rule = mult, pattern
                    break
        return GemmMultipliers(forward, self.input_grad, self.weight_grad), rule

    def check_rules_used(self, used: set[str], paths: Sequence[str]) -> None:
        """Raises if a rule pattern matched no operation (a typo, usually)."""
        unused = [
            p for p, _ in self.rules if p not in used and not any(re.search(p, x) for x in paths)
        ]
        if unused:
            seen = ", ".join(sorted(set(paths))) or "none"
            raise ValueError(
                f"policy pattern(s) {unused} matched no operation; operation paths seen: {seen}"
            )

    def check_indices(self, total: int) -> None:
        """Raises if by_index names an operation beyond the ``total`` seen."""
        bad = [k for k in self.by_index if k >= total]
        if bad:
            raise ValueError(
                f"policy by_index names operation(s) {bad}, but the function has only {total} "
                "approximable operations (0-based)"
            )

    # pytree: multipliers are children, structure is static.
    def tree_flatten(self):
        children = (
            self.default,
            tuple(m for _, m in self.rules),
            tuple(self.by_index.values()),
            None if self.input_grad == FORWARD else self.input_grad,
            None if self.weight_grad == FORWARD else self.weight_grad,
        )
        aux = (
            tuple(p for p, _ in self.rules),
            tuple(self.by_index),
            self.first_exact,
            self.last_exact,
            self.input_grad == FORWARD,
            self.weight_grad == FORWARD,
        )
        return children, aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        patterns, indices, first, last, ig_fwd, wg_fwd = aux
        obj = object.__new__(cls)
        obj.default = children[0]
        obj.rules = tuple(zip(patterns, children[1], strict=True))
        obj.by_index = dict(zip(indices, children[2], strict=True))
        obj.first_exact, obj.last_exact = first, last
        obj.input_grad = FORWARD if ig_fwd else children[3]
        obj.weight_grad = FORWARD if wg_fwd else children[4]
        return obj

    def __repr__(self) -> str:
        def name(m):
            return "exact" if m is None else getattr(m, "name", repr(m))

        parts = [f"default={name(self.default)}"]
        parts += [f"{p!r}->{name(m)}" for p, m in self.rules]
        parts += [f"#{i}->{name(m)}" for i, m in self.by_index.items()]
        if self.first_exact:
            parts.append("first exact")
        if self.last_exact:
            parts.append("last exact")
        return f"Policy({', '.join(parts)})"


def as_policy(value: Multiplier | Arithmetic | Policy | None) -> Policy:
    """A Policy from a Multiplier or Arithmetic (used everywhere), None (exact)
    or a Policy."""
    if isinstance(value, Policy):
        return value
    if value is None or isinstance(value, (Multiplier, Arithmetic, *INTEGER_KINDS)):
        if value is not None and value.batch_shape:
            raise ValueError(
                f"{value!r} is a stack of multipliers; map over it with jax.vmap so that each "
                "program sees one table"
            )
        return Policy(default=value)
    raise TypeError(f"expected a Multiplier, an Arithmetic, a Policy or None; got {value!r}")


class ContextTraceError(RuntimeError):
    """A multiplier set by ``using`` outside a staged trace was read inside it."""


def _staging() -> bool:
    """Whether operations run now are staged into a program (jit, scan, ...)
    rather than executed: a constant made now is then a tracer."""
    return isinstance(jnp.zeros((), jnp.int8), jax.core.Tracer)


def _has_concrete_tables(policy: Policy) -> bool:
    return any(not isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(policy))


class _Context:
    """One ``using`` block: its policy, whether it was entered while staging,
    and what the modules traced inside it chose (for the checks at exit)."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.staged_at_entry = _staging()
        self.count = 0
        self.first_path: str | None = None
        self.used_rules: set[str] = set()
        self.paths: list[str] = []

    def choose(self, path: str) -> GemmMultipliers:
        if not self.staged_at_entry and _has_concrete_tables(self.policy) and _staging():
            raise ContextTraceError(
                f"approxjax.using({self.policy!r}) was entered outside the jax.jit (or scan, "
                "while_loop, cond, checkpoint) now being traced: its table would be compiled "
                "into that program as a constant, and calling the program again under another "
                "multiplier would silently reuse this one. Pass the multiplier as an argument "
                "of the jitted function and enter approxjax.using inside it, e.g.\n"
                "    @jax.jit\n"
                "    def forward(params, x, multiplier):\n"
                "        with approxjax.using(multiplier):\n"
                "            return model.apply(params, x)"
            )
        if self.policy.last_exact:
            raise ValueError(
                "last_exact needs the whole function to know its last layer; modules traced "
                "one by one under using() cannot: wrap the function with "
                "approxjax.approximate(fn, policy), or give the last layer multiplier=None"
            )
        if self.first_path is None:
            self.first_path = path
        op = Operation(path, path, index=self.count, in_first_layer=path == self.first_path)
        self.count += 1
        choice, rule = self.policy.choose(op)
        if rule is not None:
            self.used_rules.add(rule)
        self.paths.append(path)
        return choice

    def check(self) -> None:
        self.policy.check_rules_used(self.used_rules, self.paths)
        self.policy.check_indices(self.count)


_CURRENT: contextvars.ContextVar[_Context | None] = contextvars.ContextVar(
    "approxjax_policy", default=None
)


@contextlib.contextmanager
def using(multiplier_or_policy: Multiplier | Policy | None) -> Iterator[Policy]:
    """Makes a multiplier (or policy) current for approxjax modules traced inside.

    ``None`` makes them exact. Nested contexts replace the outer one. When the
    block ends without an error, every rule of the policy must have matched an
    operation and every ``by_index`` entry must exist (ValueError otherwise).

    Raises:
      ContextTraceError: (inside the block) a module traced in a ``jax.jit``
        started inside the block reads a concrete multiplier set outside it.
    """
    ctx = _Context(as_policy(multiplier_or_policy))
    token = _CURRENT.set(ctx)
    try:
        yield ctx.policy
    finally:
        _CURRENT.reset(token)
    ctx.check()


def current_policy() -> Policy | None:
    """The policy set by the innermost ``using`` context, or None."""
    ctx = _CURRENT.get()
    return None if ctx is None else ctx.policy


def choose_in_context(path: str) -> GemmMultipliers:
    """The multipliers of a module's operation traced now at ``path``, from the
    innermost ``using`` context (exact where there is none)."""
    ctx = _CURRENT.get()
    if ctx is None:
        return GemmMultipliers(None)
    return ctx.choose(path)


def current_path() -> str:
    """The current JAX name stack (Flax module path while a module is called)."""
    from jax._src import source_info_util  # the name stack has no public accessor

    return str(source_info_util.current_name_stack())
