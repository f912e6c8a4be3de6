"""The Multiplier type: a table of significand products, and stacks of them.

A multiplier with ``m`` mantissa bits (``0 <= m <= 12``) is a float32 lookup
table of shape ``(2**m, 2**m)``: entry ``[i, j]`` is the approximate product of
the two significands ``1.i`` and ``1.j`` whose top ``m`` fraction bits are ``i``
and ``j``. Sign and exponent are handled exactly; see :mod:`approxjax.reference`
for the complete rule (zeros, subnormals, inf, NaN, overflow, underflow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from approxjax._src.arithmetic import lowrank
from approxjax._src.kernels import ffi

MAX_MANTISSA_BITS = 12
# Concrete tables up to this m are searched for exact factors of rank up to
# AUTO_RANK when they are made (a few ms at m = 8); larger ones on request
# (Multiplier.factored).
AUTO_FACTOR_BITS = 8
AUTO_RANK = 4


def _mantissa_bits_of_shape(shape: tuple[int, ...]) -> int:
    """The m of a table shape ``(..., 2**m, 2**m)``; raises ValueError otherwise."""
    if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] < 1:
        raise ValueError(
            f"lut must have shape (2**m, 2**m) with 0 <= m <= {MAX_MANTISSA_BITS}; got {shape}"
        )
    side = shape[-1]
    m = side.bit_length() - 1
    if (1 << m) != side or m > MAX_MANTISSA_BITS:
        raise ValueError(
            f"lut must have shape (2**m, 2**m) with 0 <= m <= {MAX_MANTISSA_BITS}; got {shape} "
            f"(side {side} is {'not a power of two' if (1 << m) != side else 'too large'})"
        )
    return m


def check_mantissa_bits(m: Any) -> int:
    """Validates a mantissa-bit count and returns it as an int."""
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
        raise TypeError(f"mantissa bits m must be an int; got {m!r} of type {type(m).__name__}")
    if not 0 <= int(m) <= MAX_MANTISSA_BITS:
        raise ValueError(f"mantissa bits m must be in [0, {MAX_MANTISSA_BITS}]; got {m}")
    return int(m)


def _validated_table(lut: Any) -> np.ndarray:
    """A concrete table as a float32 numpy array, checked entry by entry."""
    try:
        raw = np.asarray(lut)
    except Exception as e:  # noqa: BLE001 - report any conversion failure the same way
        raise TypeError(f"lut must be a real array convertible to float32; got {lut!r}") from e
    if raw.dtype.kind not in "fiu":
        raise TypeError(f"lut must be a real array convertible to float32; got dtype {raw.dtype}")
    _mantissa_bits_of_shape(raw.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        table = raw.astype(np.float32)
    bad = ~np.isfinite(table) | (table < 0)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"lut entries must be finite and >= 0 (as float32); lut{list(where)} = "
            f"{raw[where].item()!r}"
            + (f" (float32: {table[where].item()!r})" if raw.dtype != np.float32 else "")
        )
    return np.where(table == 0, np.float32(0), table)  # -0.0 -> +0.0


@jax.tree_util.register_pytree_node_class
class Multiplier:
    """A simulated multiplier: a lookup table of significand products.

    The table is a pytree leaf, so a ``Multiplier`` passes through ``jit`` as
    data and ``vmap`` maps over a stack of them. So are its *facts*: what the
    CPU kernels need to know of the table (validity, exponent range,
    separable factors, compact planes and codes), computed once here by the
    ``approxjax_analyze_lut`` kernel (in the program, for a traced table)
    rather than on every GEMM. Its mantissa-bit count and
    names are static and part of the tree structure, so a jitted function
    keys its compiled programs on the names: a multiplier with another name
    retraces (and records its own name in reports), one with the same name
    and another table reuses the program. Sweeps that should compile once
    go through ``jax.vmap`` over :func:`stack`.

    Args:
      lut: table of shape ``(2**m, 2**m)`` (or ``(S, 2**m, 2**m)`` for a stack of
        S multipliers), any real array convertible to float32, entries finite
        and >= 0.
      name: a name for reports (a sequence of S names for a stack).
      metadata: provenance kept with the table and written by
        :func:`approxjax.save_lut` (source hash, parameters, ...); not part of
        the pytree.
      factors: ``(u, v)``, each of shape ``(r, 2**m)``, with ``lut[i, j] ==
        sum_t u[t, i] * v[t, j]`` (checked: to float32 rounding, first pair
        positive), for the native path (``method="native"``, see
        :func:`approxjax.decompose`). Default: for a concrete table with
        ``m <= 8``, exact factors of rank up to 4 if the table has them
        (found and verified exactly when the multiplier is made); otherwise
        none (:meth:`factored` finds them for larger tables).

    Raises:
      TypeError: the table is not a real numeric array.
      ValueError: the shape is not ``(..., 2**m, 2**m)`` with ``0 <= m <= 12``, or an
        entry is NaN, infinite or negative (for a traced table: an error when
        the program runs). A zero of either sign is +0.0 in the table.

    Example::

      >>> import numpy as np, approxjax
      >>> m = 2
      >>> sig = 1 + np.arange(2**m) / 2**m
      >>> mult = approxjax.Multiplier(np.outer(sig, sig), name="exact2")
      >>> mult.mantissa_bits
      2
    """

    __slots__ = ("lut", "facts", "factors", "mantissa_bits", "names", "metadata", "_subsampled")

    def __init__(
        self,
        lut: Any,
        name: str | Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        factors: tuple[Any, Any] | None = None,
    ):
        if isinstance(lut, jax.core.Tracer):
            m = _mantissa_bits_of_shape(tuple(lut.shape))
            if not jnp.issubdtype(lut.dtype, jnp.floating):
                raise TypeError(f"lut must be a floating array; got dtype {lut.dtype}")
            table = lut.astype(jnp.float32)
            table = jnp.where(table == 0, jnp.float32(0), table)  # -0.0 -> +0.0, as below
            facts = ffi.analyze(table)
            if factors is not None:
                factors = tuple(jnp.asarray(f, jnp.float32) for f in factors)
        else:
            host = _validated_table(lut)
            m = _mantissa_bits_of_shape(host.shape)
            table = jnp.asarray(host)
            facts = _concrete_facts(host)
            if factors is not None:
                if host.ndim != 2:
                    raise ValueError("factors are given for one table, not a stack")
                factors = _as_leaves(lowrank.check_factors(host, *factors))
            elif host.ndim == 2 and m <= AUTO_FACTOR_BITS:
                found = lowrank.exact_factors(host, AUTO_RANK)
                factors = _as_leaves(found) if found is not None and found.usable else None
        self.lut = table
        self.facts = facts
        self.factors = factors
        self.mantissa_bits = m
        self.names = names_of(name, table.shape[:-2], f"lut{m}")
        self.metadata = dict(metadata or {})
        self._subsampled = {}

    @property
    def name(self) -> str:
        """The multiplier's name (the names joined by '+' for a stack)."""
        return "+".join(self.names)

    @property
    def rank(self) -> int | None:
        """The rank of the factors the native path uses (None: no factors)."""
        return None if self.factors is None else int(self.factors[0].shape[-2])

    def factored(self, max_rank: int = AUTO_RANK) -> Multiplier:
        """This multiplier with exact factors of the smallest rank up to
        ``max_rank`` (found and verified exactly; seconds for ``m = 12``).

        Raises:
          ValueError: the table has no exact decomposition of rank up to
            ``max_rank``, or one the native path cannot use (the message says
            which), or this is a stack or a traced table.
        """
        if self.batch_shape:
            raise ValueError(f"factored takes one multiplier; {self.name} is a stack")
        if isinstance(self.lut, jax.core.Tracer):
            raise ValueError(f"{self.name}: a traced table cannot be factored (before jit, it can)")
        lowrank.check_rank("max_rank", max_rank)
        host = np.asarray(self.lut)
        found = lowrank.exact_factors(host, max_rank)
        if found is None:
            raise ValueError(
                f"{self.name} has no exact decomposition of rank <= {max_rank} "
                "(approxjax.decompose reports the residuals of low-rank approximations; "
                "approxjax.surrogate makes an approximate one, explicitly)"
            )
        if not found.usable:
            raise ValueError(
                f"{self.name} has exact rank {found.rank}, but its factors cannot run natively "
                f"(first pair not positive everywhere, or float32 error {found.float32_error:.3g})"
            )
        out = Multiplier._unchecked(self.lut, self.facts, self.mantissa_bits, self.names)
        out.factors = _as_leaves(found)
        out.metadata = dict(self.metadata)
        return out

    def subsampled(self, bits: int) -> Multiplier:
        """The multiplier of ``bits <= m`` mantissa bits whose table holds
        this one's entries at significands of ``bits`` bits (every
        ``2**(m - bits)``-th row and column, with its own facts and the
        factors' same columns): the same products for operands of at most
        ``bits`` mantissa bits, from a smaller table (faster to sweep).
        """
        bits = check_mantissa_bits(bits)
        if bits > self.mantissa_bits:
            raise ValueError(
                f"{self.name} has m = {self.mantissa_bits}; cannot subsample to {bits} bits"
            )
        if bits == self.mantissa_bits:
            return self
        step = 1 << (self.mantissa_bits - bits)
        if isinstance(self.lut, jax.core.Tracer):  # analysed in the program, each trace
            lut = self.lut[..., ::step, ::step]
            factors = None if self.factors is None else tuple(f[..., ::step] for f in self.factors)
            return Multiplier._unchecked(lut, ffi.analyze(lut), bits, self.names, factors)
        if bits not in self._subsampled:  # analysed once, now (numpy: not staged by a trace)
            host = np.asarray(self.lut)[..., ::step, ::step]
            factors = self.factors and tuple(
                jnp.asarray(np.asarray(f)[..., ::step]) for f in self.factors
            )
            self._subsampled[bits] = Multiplier._unchecked(
                jnp.asarray(host), _concrete_facts(host), bits, self.names, factors
            )
        return self._subsampled[bits]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading shape of a stack of multipliers; ``()`` for one."""
        return tuple(self.lut.shape[:-2])

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError(f"{self.name} is a single multiplier, not a stack")
        return self.batch_shape[0]

    def __getitem__(self, i: int) -> Multiplier:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"multiplier index {i} out of range for a stack of {n}")
        names = self.names if len(self.names) != n else (self.names[i],)
        factors = None if self.factors is None else tuple(f[i] for f in self.factors)
        return Multiplier._unchecked(self.lut[i], self.facts[i], self.mantissa_bits, names, factors)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.batch_shape))
        stack = f", stack={shape}" if shape else ""
        return f"Multiplier({self.name!r}, m={self.mantissa_bits}{stack})"

    @classmethod
    def _unchecked(
        cls, lut: Any, facts: Any, m: int, names: tuple[str, ...], factors: Any = None
    ) -> Multiplier:
        obj = object.__new__(cls)
        obj.lut = lut
        obj.facts = facts
        obj.factors = factors
        obj.mantissa_bits = m
        obj.names = names
        obj.metadata = {}
        obj._subsampled = {}
        return obj

    def tree_flatten(self):
        return (self.lut, self.facts, self.factors), (self.mantissa_bits, self.names)

    @classmethod
    def tree_unflatten(cls, aux, children):
        factors = None if children[2] is None else tuple(children[2])
        return cls._unchecked(children[0], children[1], aux[0], tuple(aux[1]), factors)


def _as_leaves(found: lowrank.Factors) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(found.u, jnp.float32), jnp.asarray(found.v, jnp.float32)


_analyze_jit = jax.jit(ffi.analyze)


def _concrete_facts(table: np.ndarray) -> jax.Array:
    """The facts of a concrete table, computed now on the CPU (where the
    analysis kernel runs), then placed like the table (uncommitted, on the
    default device), so they go wherever the table goes."""
    cpu = jax.local_devices(backend="cpu")[0]  # this process's own
    with jax.ensure_compile_time_eval():  # now, even while a function is traced
        facts = np.asarray(_analyze_jit(jax.device_put(table, cpu)))
    return jnp.asarray(facts)


def names_of(
    name: str | Sequence[str] | None, batch: tuple[int, ...], base: str
) -> tuple[str, ...]:
    """The names of a multiplier or a stack: ``name`` (one, or one per member
    of the stack), or ``base`` numbered."""
    if name is None:
        count = int(np.prod(batch)) if batch else 1
        return (base,) if count == 1 else tuple(f"{base}[{i}]" for i in range(count))
    if isinstance(name, str):
        return (name,)
    names = tuple(str(n) for n in name)
    if batch and len(names) != batch[0]:
        raise ValueError(f"a stack of {batch[0]} multipliers needs {batch[0]} names; got {names}")
    return names


def significands(m: int) -> np.ndarray:
    """The 2**m significands ``1 + i / 2**m`` (exact in float64)."""
    m = check_mantissa_bits(m)
    return 1.0 + np.arange(1 << m, dtype=np.float64) / (1 << m)


def stack(multipliers: Sequence[Multiplier]) -> Multiplier:
    """A stack of multipliers with the same m, for ``jax.vmap`` sweeps.

    Raises:
      ValueError: the list is empty or the mantissa-bit counts differ.
    """
    multipliers = list(multipliers)
    if not multipliers:
        raise ValueError("stack needs at least one multiplier")
    for x in multipliers:
        if not isinstance(x, Multiplier):
            raise TypeError(f"stack takes Multipliers; got {type(x).__name__}")
    bits = {x.mantissa_bits for x in multipliers}
    if len(bits) != 1:
        detail = ", ".join(f"{x.name}: m={x.mantissa_bits}" for x in multipliers)
        raise ValueError(f"stacked multipliers must share one m; got {detail}")
    for x in multipliers:
        if x.batch_shape:
            raise ValueError(f"stack takes single multipliers; {x.name} is already a stack")
    lut = jnp.stack([x.lut for x in multipliers])
    facts = jnp.stack([x.facts for x in multipliers])
    names = tuple(x.name for x in multipliers)
    factors = None
    if all(x.factors is not None for x in multipliers):
        # Ranks padded with zero terms to the largest: one program for all.
        r = max(x.rank for x in multipliers)
        pad = [((0, r - x.rank), (0, 0)) for x in multipliers]
        factors = tuple(
            jnp.stack([jnp.pad(x.factors[s], p) for x, p in zip(multipliers, pad, strict=True)])
            for s in (0, 1)
        )
    return Multiplier._unchecked(lut, facts, bits.pop(), names, factors)
