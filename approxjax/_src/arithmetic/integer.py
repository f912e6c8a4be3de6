"""Integer multipliers: tables of integer products of operand codes.

An integer multiplier maps an ``a``-bit operand code and a ``b``-bit operand
code (2 to 16 bits each, equal or not; each signed or unsigned) to an integer
product, as the circuits of EvoApproxLib and its peers do. Up to 12 x 12 bits
it is a lookup table of int32 products, ``table[i, j]``, where ``i`` and
``j`` are the operands' *bit patterns*: the code itself for an unsigned
operand, its two's complement bits for a signed one (code ``-1`` of an 8-bit
signed operand is row 255). The table is a pytree leaf, as a float
multiplier's is, so ``jit`` takes it as data and ``vmap`` maps over a stack.

Wider operands (13 to 16 bits on either side) are *function models*: a
compiled C model (:func:`approxjax.from_c` with ``bits=16``) that the CPU
kernel calls once per product, in process (:class:`IntegerFunction`). It has
no table and no pytree leaves (the compiled function is static), so it does
not stack; its sums are exact in int64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from approxjax._src.arithmetic.multipliers import names_of

MIN_BITS = 2
MAX_BITS = 16
MAX_TABLE_BITS = 12  # a table of 2**12 x 2**12 int32 entries is 64 MiB
INT32_MAX = (1 << 31) - 1


def check_bits(bits: Any) -> tuple[int, int]:
    """Operand widths ``bits`` (an int, or a pair for unequal widths) as a pair.

    Raises:
      TypeError: not an int or a pair of ints.
      ValueError: a width outside [2, 16].
    """
    pair = (bits, bits) if not isinstance(bits, (tuple, list)) else tuple(bits)
    if len(pair) != 2:
        raise ValueError(f"bits must be an int or a pair (a, b); got {bits!r}")
    for w in pair:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)):
            raise TypeError(f"bits must be ints; got {bits!r}")
        if not MIN_BITS <= int(w) <= MAX_BITS:
            raise ValueError(
                f"operand widths must be {MIN_BITS} to {MAX_BITS} bits; got bits={bits!r}"
            )
    return int(pair[0]), int(pair[1])


def check_signed(signed: Any) -> tuple[bool, bool]:
    """Signedness (a bool, or a pair of bools) as a pair."""
    pair = (signed, signed) if not isinstance(signed, (tuple, list)) else tuple(signed)
    if len(pair) != 2 or not all(isinstance(s, (bool, np.bool_)) for s in pair):
        raise TypeError(f"signed must be a bool or a pair of bools; got {signed!r}")
    return bool(pair[0]), bool(pair[1])


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """The least and greatest code of a ``bits``-bit operand."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def operand_values(bits: int, signed: bool) -> np.ndarray:
    """The operand value of each table index (bit pattern), int64."""
    i = np.arange(1 << bits, dtype=np.int64)
    if signed:
        half = 1 << (bits - 1)
        return (i ^ half) - half
    return i


def tabulate(
    fn: Callable[[np.ndarray, np.ndarray], Any], bits: tuple[int, int], signed: tuple[bool, bool]
) -> np.ndarray:
    """``fn`` on every pair of operand values (int64 arrays broadcast to the
    table's shape), as an int64 table indexed by bit patterns."""
    va = operand_values(bits[0], signed[0])[:, None]
    vb = operand_values(bits[1], signed[1])[None, :]
    out = np.asarray(fn(va, vb))
    return np.broadcast_to(out, (va.size, vb.size)).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class IntegerFunction:
    """A compiled integer model the CPU kernel calls in process: ``address``
    of ``long long approxjax_integer_entry(long long a, long long b)`` (the
    operand values in, the product out) in the loaded library ``handle``;
    ``evaluate(a, b)`` runs the same model on arrays of operand values in a
    child process (for characterization and reference results: a model
    that crashes there is an error, not a dead process). Equal when built
    from the same source and flags."""

    function: str
    digest: str
    address: int
    evaluate: Callable[[np.ndarray, np.ndarray], np.ndarray]
    handle: Any = None

    def __eq__(self, other):
        return isinstance(other, IntegerFunction) and other.digest == self.digest

    def __hash__(self):
        return hash(self.digest)


def _checked_table(table: Any, bits: tuple[int, int]) -> np.ndarray:
    try:
        raw = np.asarray(table)
    except Exception as e:  # noqa: BLE001 - one message for any conversion failure
        raise TypeError(f"table must be an integer array; got {table!r}") from e
    if raw.dtype.kind == "f":
        raise TypeError(
            "table must hold integer products; got a float table (dtype "
            f"{raw.dtype}): a float mantissa table is an approxjax.Multiplier"
        )
    if raw.dtype.kind not in "iu":
        raise TypeError(f"table must be an integer array; got dtype {raw.dtype}")
    want = (1 << bits[0], 1 << bits[1])
    if raw.shape[-2:] != want:
        raise ValueError(
            f"a table of {bits[0]} x {bits[1]}-bit codes has shape {want}; got {raw.shape}"
        )
    wide = raw.astype(np.int64)
    if wide.size and (wide.min() < -INT32_MAX - 1 or wide.max() > INT32_MAX):
        k = np.unravel_index(int(np.argmax(np.abs(wide))), wide.shape)
        raise ValueError(
            f"table entries must fit int32; entry {list(map(int, k))} is {int(wide[k])}"
        )
    return wide.astype(np.int32)


@jax.tree_util.register_pytree_node_class
class IntegerMultiplier:
    """An integer multiplier: a table of int32 products of operand codes.

    Args:
      table: integer array of shape ``(2**a, 2**b)`` (or ``(S, 2**a, 2**b)``
        for a stack of S), indexed by the operands' bit patterns (see the
        module docstring), entries within int32.
      bits: operand widths: ``8``, or ``(8, 4)`` for unequal ones (2 to 12
        for a table).
      signed: whether the operands are two's complement codes (a bool, or a
        pair).
      name: a name for reports (a sequence of S names for a stack).
      cost: hardware figures such as ``{"power_mW": 0.363, "area_um2": 635.0,
        "delay_ns": 1.37}`` (empty when unknown).
      metadata: provenance (source, paper, parameters); not part of the pytree.

    Raises:
      TypeError: a float table (that is an :class:`approxjax.Multiplier`), or
        a table that is not an integer array.
      ValueError: widths outside 2..12, a shape that does not match them, or
        entries outside int32.

    Example::

      >>> import numpy as np, approxjax as ax
      >>> v = np.arange(16)
      >>> mult = ax.IntegerMultiplier(np.outer(v, v), bits=4, signed=False, name="exact4u")
      >>> mult.bits, int(mult.table[3, 5])
      ((4, 4), 15)
    """

    __slots__ = ("table", "function", "bits", "signed", "names", "cost", "bound", "metadata")

    def __init__(
        self,
        table: Any,
        *,
        bits: int | tuple[int, int] = 8,
        signed: bool | tuple[bool, bool] = True,
        name: str | Sequence[str] | None = None,
        cost: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        pair = check_bits(bits)
        if max(pair) > MAX_TABLE_BITS:
            raise ValueError(
                f"integer tables hold operands of up to {MAX_TABLE_BITS} bits; got bits={bits!r} "
                "(wider operands are function models: approxjax.from_c(..., bits=16))"
            )
        host = _checked_table(table, pair)
        self.table = jnp.asarray(host)
        self.function = None
        self.bits = pair
        self.signed = check_signed(signed)
        self.names = names_of(name, host.shape[:-2], _default_name(pair, self.signed))
        self.cost = _checked_cost(cost)
        self.bound = int(np.abs(host.astype(np.int64)).max()) if host.size else 0
        self.metadata = dict(metadata or {})

    @classmethod
    def function_model(
        cls,
        function: IntegerFunction,
        *,
        bits: int | tuple[int, int],
        signed: bool | tuple[bool, bool] = True,
        name: str | None = None,
        cost: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> IntegerMultiplier:
        """A multiplier of operands too wide for a table, computed by a
        compiled model in the CPU kernel (see the module docstring; made by
        :func:`approxjax.from_c` with ``bits`` above 12)."""
        obj = object.__new__(cls)
        obj.table = None
        obj.function = function
        obj.bits = check_bits(bits)
        obj.signed = check_signed(signed)
        obj.names = (name or function.function,)
        obj.cost = _checked_cost(cost)
        obj.bound = None  # unknown: the kernel sums in int64 and checks
        obj.metadata = dict(metadata or {})
        return obj

    @property
    def name(self) -> str:
        """The multiplier's name (the names joined by '+' for a stack)."""
        return "+".join(self.names)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading shape of a stack; ``()`` for one multiplier."""
        return () if self.table is None else tuple(self.table.shape[:-2])

    def products(self, a: Any, b: Any) -> np.ndarray:
        """The multiplier's products of operand values ``a`` and ``b``
        (broadcast; int64): table lookups, or a function model run in a
        child process. Values must be within the operands' code ranges."""
        a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
        if self.function is not None:
            flat = self.function.evaluate(a.reshape(-1), b.reshape(-1))
            return np.asarray(flat, np.int64).reshape(a.shape)
        from approxjax._src.arithmetic.reference import integer_multiply

        return np.asarray(integer_multiply(a, b, self), np.int64)

    def code_range(self, operand: int) -> tuple[int, int]:
        """The least and greatest code of operand 0 (lhs) or 1 (rhs)."""
        return code_range(self.bits[operand], self.signed[operand])

    def values(self, operand: int) -> np.ndarray:
        """The operand value of each table row (0) or column (1)."""
        return operand_values(self.bits[operand], self.signed[operand])

    def exact_table(self) -> np.ndarray:
        """The exact products of the table's operand pairs (int64)."""
        return self.values(0)[:, None] * self.values(1)[None, :]

    def __bool__(self) -> bool:  # truthy although a single one has no len()
        return True

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError(f"{self.name} is a single multiplier, not a stack")
        return self.batch_shape[0]

    def __getitem__(self, i: int) -> IntegerMultiplier:
        if self.function is not None:
            raise TypeError(f"{self.name} is a single function model, not a stack")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"multiplier index {i} out of range for a stack of {n}")
        names = self.names if len(self.names) != n else (self.names[i],)
        return self._with(self.table[i], names)

    def __repr__(self) -> str:
        sign = "".join("s" if s else "u" for s in self.signed)
        shape = "x".join(map(str, self.batch_shape))
        stack = f", stack={shape}" if shape else ""
        model = ", function model" if self.function is not None else ""
        return f"IntegerMultiplier({self.name!r}, bits={self.bits}, {sign}{stack}{model})"

    def with_cost(self, cost: Mapping[str, float]) -> IntegerMultiplier:
        """The same multiplier with ``cost`` as its hardware figures (such as
        ``{"power_mW": 0.31}``).

        Raises:
          TypeError, ValueError: a key that is not a string, a value that is
            not a finite number >= 0.
        """
        out = self._with(self.table, self.names)
        out.cost = _checked_cost(cost)
        return out

    def _with(self, table: Any, names: tuple[str, ...]) -> IntegerMultiplier:
        obj = object.__new__(IntegerMultiplier)
        obj.table = table
        obj.function = self.function
        obj.bits = self.bits
        obj.signed = self.signed
        obj.names = names
        obj.cost = dict(self.cost)
        obj.bound = self.bound
        obj.metadata = dict(self.metadata)
        return obj

    def tree_flatten(self):
        cost = tuple(sorted(self.cost.items()))
        aux = (self.bits, self.signed, self.names, cost, self.bound, self.function)
        return (() if self.function is not None else (self.table,)), aux

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.function = aux[5]
        obj.table = None if obj.function is not None else children[0]
        obj.bits, obj.signed, obj.names = aux[0], aux[1], tuple(aux[2])
        obj.cost = dict(aux[3])
        obj.bound = aux[4]
        obj.metadata = {}
        return obj


def _default_name(bits: tuple[int, int], signed: tuple[bool, bool]) -> str:
    sign = "s" if signed[0] or signed[1] else "u"
    return f"int{bits[0]}{sign}" if bits[0] == bits[1] else f"int{bits[0]}x{bits[1]}{sign}"


def _checked_cost(cost: Mapping[str, float] | None) -> dict[str, float]:
    out = {}
    for key, value in dict(cost or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"cost keys must be strings such as 'power_mW'; got {key!r}")
        try:
            v = float(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"cost[{key!r}] must be a number; got {value!r}") from e
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"cost[{key!r}] must be finite and >= 0; got {value!r}")
        out[key] = v
    return out


def stack_integer(multipliers: Sequence[IntegerMultiplier]) -> IntegerMultiplier:
    """A stack of integer multipliers of the same widths and signedness, for
    ``jax.vmap`` sweeps (one kernel call for the whole stack).

    Raises:
      ValueError: the widths or signedness differ, or one is already a stack.
    """
    items = list(multipliers)
    first = items[0]
    for x in items:
        if not isinstance(x, IntegerMultiplier):
            raise TypeError(f"stack takes IntegerMultipliers only; got {type(x).__name__}")
        if x.function is not None:
            raise TypeError(
                f"{x.name} is a function model ({x.bits[0]} x {x.bits[1]} bits): it has no table "
                "to stack; sweep such multipliers one at a time (tables hold up to "
                f"{MAX_TABLE_BITS} bits)"
            )
        if (x.bits, x.signed) != (first.bits, first.signed):
            raise ValueError(
                f"stacked integer multipliers must share widths and signedness: {first!r} and "
                f"{x!r} differ"
            )
        if x.batch_shape:
            raise ValueError(f"stack takes single multipliers; {x.name} is already a stack")
    out = first._with(jnp.stack([x.table for x in items]), tuple(x.name for x in items))
    out.bound = max(x.bound for x in items)
    out.cost = {}
    return out
