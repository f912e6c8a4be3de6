"""Which multiplier each operation uses: policies, and the ``using`` context.

A :class:`Policy` chooses, for every approximable operation (a dot_general or a
convolution, forward pass and both gradients), a forward multiplier and the
two gradient multipliers:

* by **path**: regular expressions searched in the operation's path (the Flax
  module path such as ``"LeNet/Conv_0"``, from JAX's name stack); the first rule
  that matches wins;
* by **order of appearance**: ``by_index={0: None}`` (0-based, in program order);
* ``first_exact`` / ``last_exact``: the first / last operation exact, the usual
  choice for the input and classifier layers;
* otherwise the ``default``.

A multiplier given as ``None`` means exact float32. Policies are pytrees (the
multipliers' tables are leaves), so a training step can take one as an
argument, and ``jax.vmap`` over a policy built from a stack of multipliers
sweeps them.

``with approxjax.using(multiplier_or_policy): ...`` makes a policy current while
a function is traced; approxjax's Flax modules (with their default
``multiplier="context"``) read it, so an unmodified training loop gets its
multiplier as data::

    def train_step(state, batch, multiplier):
        with approxjax.using(multiplier):
            ...  # loss, grads through state.apply_fn

    jax.jit(jax.vmap(train_step, in_axes=(0, None, 0)))(states, batch, stack)
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax

from approxjax.multipliers import Multiplier

FORWARD = "forward"


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


def _check_choice(name: str, value: Any, allow_forward: bool) -> None:
    if value is None or isinstance(value, Multiplier):
        return
    if allow_forward and isinstance(value, str) and value == FORWARD:
        return
    raise TypeError(
        f"{name} must be a Multiplier, None (exact)"
        + (" or 'forward'" if allow_forward else "")
        + f"; got {value!r}"
    )


@jax.tree_util.register_pytree_node_class
class Policy:
    """A rule set choosing each operation's multipliers (see the module docstring).

    Args:
      default: multiplier of operations no rule chooses (None: exact).
      rules: ``(pattern, multiplier)`` pairs, or a mapping; ``re.search`` on the
        operation's path, first match wins.
      by_index: ``{index: multiplier}`` by order of appearance (0-based).
      first_exact, last_exact: make the first / last operation exact.
      input_grad, weight_grad: gradient multipliers of every approximate
        operation: ``"forward"``, a Multiplier, or None (exact).

    Raises:
      ValueError: a pattern is not a valid regular expression.
      TypeError: a multiplier is not a Multiplier, None or "forward".
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
            _check_choice(f"multiplier of rule {rule[0]!r}", rule[1], False)
        by_index = dict(by_index or {})
        for k, v in by_index.items():
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ValueError(f"by_index keys are operation indices >= 0; got {k!r}")
            _check_choice(f"by_index[{k}]", v, False)
        _check_choice("default", default, False)
        _check_choice("input_grad", input_grad, True)
        _check_choice("weight_grad", weight_grad, True)
        self.default = default
        self.rules = rules
        self.by_index = by_index
        self.first_exact = bool(first_exact)
        self.last_exact = bool(last_exact)
        self.input_grad = input_grad
        self.weight_grad = weight_grad

    def choose(self, path: str, index: int | None = None, total: int | None = None):
        """The GemmMultipliers of an operation, and the rule (pattern) that chose it."""
        rule = None
        if index is not None and self.first_exact and index == 0:
            forward = None
        elif index is not None and total is not None and self.last_exact and index == total - 1:
            forward = None
        elif index is not None and index in self.by_index:
            forward = self.by_index[index]
        else:
            forward = self.default
            for pattern, mult in self.rules:
                if re.search(pattern, path):
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


def as_policy(value: Multiplier | Policy | None) -> Policy:
    """A Policy from a Multiplier (used everywhere), None (exact) or a Policy."""
    if isinstance(value, Policy):
        return value
    if value is None or isinstance(value, Multiplier):
        if isinstance(value, Multiplier) and value.lut.ndim != 2:
            raise ValueError(
                f"{value!r} is a stack of multipliers; map over it with jax.vmap so that each "
                "program sees one table"
            )
        return Policy(default=value)
    raise TypeError(f"expected a Multiplier, a Policy or None; got {value!r}")


_CURRENT: contextvars.ContextVar[Policy | None] = contextvars.ContextVar(
    "approxjax_policy", default=None
)


@contextlib.contextmanager
def using(multiplier_or_policy: Multiplier | Policy | None) -> Iterator[Policy]:
    """Makes a multiplier (or policy) current for approxjax modules traced inside.

    ``None`` makes them exact. Nested contexts replace the outer one.
    """
    token = _CURRENT.set(as_policy(multiplier_or_policy))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def current_policy() -> Policy | None:
    """The policy set by the innermost ``using`` context, or None."""
    return _CURRENT.get()


def current_path() -> str:
    """The current JAX name stack (Flax module path while a module is called)."""
    from jax._src import source_info_util  # the name stack has no public accessor

    return str(source_info_util.current_name_stack())
