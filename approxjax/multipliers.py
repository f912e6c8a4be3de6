"""The Multiplier type and the catalog of built-in approximate multipliers.

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

MAX_MANTISSA_BITS = 12


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
    data and ``vmap`` maps over a stack of them; its mantissa-bit count and
    names are static.

    Args:
      lut: table of shape ``(2**m, 2**m)`` (or ``(S, 2**m, 2**m)`` for a stack of
        S multipliers), any real array convertible to float32, entries finite
        and >= 0.
      name: a name for reports (a sequence of S names for a stack).
      metadata: provenance kept with the table and written by
        :func:`approxjax.save_lut` (source hash, parameters, ...); not part of
        the pytree.

    Raises:
      TypeError: the table is not a real numeric array.
      ValueError: the shape is not ``(..., 2**m, 2**m)`` with ``0 <= m <= 12``, or an
        entry is NaN, infinite or negative.

    Example::

      >>> import numpy as np, approxjax
      >>> m = 2
      >>> sig = 1 + np.arange(2**m) / 2**m
      >>> mult = approxjax.Multiplier(np.outer(sig, sig), name="exact2")
      >>> mult.mantissa_bits
      2
    """

    __slots__ = ("lut", "mantissa_bits", "names", "metadata")

    def __init__(
        self,
        lut: Any,
        name: str | Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        if isinstance(lut, jax.core.Tracer):
            m = _mantissa_bits_of_shape(tuple(lut.shape))
            if not jnp.issubdtype(lut.dtype, jnp.floating):
                raise TypeError(f"lut must be a floating array; got dtype {lut.dtype}")
            table = lut.astype(jnp.float32)
        else:
            host = _validated_table(lut)
            m = _mantissa_bits_of_shape(host.shape)
            table = jnp.asarray(host)
        self.lut = table
        self.mantissa_bits = m
        self.names = _names(name, table.shape[:-2], m)
        self.metadata = dict(metadata or {})

    @property
    def name(self) -> str:
        """The multiplier's name (the names joined by '+' for a stack)."""
        return "+".join(self.names)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading shape of a stack of multipliers; ``()`` for one."""
        return tuple(self.lut.shape[:-2])

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError(f"{self.name} is a single multiplier, not a stack")
        return self.batch_shape[0]

    def __getitem__(self, i: int) -> Multiplier:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"multiplier index {i} out of range for a stack of {n}")
        names = self.names if len(self.names) != n else (self.names[i],)
        return Multiplier._unchecked(self.lut[i], self.mantissa_bits, names)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.batch_shape))
        stack = f", stack={shape}" if shape else ""
        return f"Multiplier({self.name!r}, m={self.mantissa_bits}{stack})"

    @classmethod
    def _unchecked(cls, lut: Any, m: int, names: tuple[str, ...]) -> Multiplier:
        obj = object.__new__(cls)
        obj.lut = lut
        obj.mantissa_bits = m
        obj.names = names
        obj.metadata = {}
        return obj

    def tree_flatten(self):
        return (self.lut,), (self.mantissa_bits, _Names(self.names))

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls._unchecked(children[0], aux[0], tuple(aux[1]))


class _Names(tuple):
    """Names in a pytree's static data that compare equal to any other names.

    Names are labels for reports: two multipliers with the same m but other
    names must share one compiled program, so names never enter the
    comparison that JAX's caches make between tree structures.
    """

    __slots__ = ()

    def __eq__(self, other):
        return isinstance(other, _Names)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(_Names)


def _names(name: str | Sequence[str] | None, batch: tuple[int, ...], m: int) -> tuple[str, ...]:
    if name is None:
        count = int(np.prod(batch)) if batch else 1
        base = f"lut{m}"
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


def _fractions(m: int, force_lowest_bit: bool = False) -> np.ndarray:
    """Operand fractions ``i / 2**m``, optionally with the lowest kept bit set to 1."""
    i = np.arange(1 << m, dtype=np.int64)
    if force_lowest_bit and m > 0:
        i = i | 1
    return i.astype(np.float64) / (1 << m)


def _truncate_result(p: np.ndarray, m: int) -> np.ndarray:
    """Truncates each product's significand to ``m`` fraction bits (p > 0)."""
    exp = np.floor(np.log2(p))
    sig = p / 2.0**exp
    return np.floor(sig * (1 << m)) / (1 << m) * 2.0**exp


def _table(p: np.ndarray, m: int, truncate_result: bool) -> np.ndarray:
    if truncate_result:
        p = _truncate_result(p, m)
    return p.astype(np.float32)


def _param_name(base: str, m: int, **params) -> str:
    extra = "".join(f":{k}=1" if v is True else f":{k}={v}" for k, v in params.items() if v)
    return f"{base}{m}{extra}"


def truncated(m: int, *, truncate_result: bool = False) -> Multiplier:
    """Exact multiplication of significands truncated to ``m`` fraction bits.

    ``lut[i, j] = (1 + i/2**m) * (1 + j/2**m)`` rounded once to float32 (exact
    for ``m <= 11``): each operand keeps its top ``m`` fraction bits (truncation,
    as a narrow multiplier's input stage does). At ``m = 7`` this is
    bfloat16-input multiplication with truncated conversion, and the product
    equals the float32 product of the two truncated operands wherever that is
    a normal number. For ``m <= 11`` (without ``truncate_result``) the table
    is separable, ``lut[i, j] == f[i] * g[j]`` exactly, so the CPU kernel
    runs it as a GEMM of the transformed operands, without per-tile tables;
    at ``m = 12`` it is ``float32(f[i] * g[j])``, and the kernel rounds each
    product of the transformed operands before adding it.

    Args:
      m: mantissa bits, 0 to 12.
      truncate_result: also truncate the product's significand to ``m`` fraction
        bits (ApproxTrain's ``ACC_7`` bfloat16 table is ``truncated(7,
        truncate_result=True)``).
    """
    sig = 1.0 + _fractions(check_mantissa_bits(m))
    name = _param_name("truncated", m, trunc=truncate_result)
    return Multiplier(_table(np.outer(sig, sig), m, truncate_result), name=name)


def mitchell(
    m: int, *, force_lowest_bit: bool = False, truncate_result: bool = False
) -> Multiplier:
    """Mitchell's logarithmic multiplier.

    J. N. Mitchell, "Computer multiplication and division using binary
    logarithms", IRE Trans. Electronic Computers, EC-11(4), 1962.

    With significands ``1 + x`` and ``1 + y`` (``x, y`` in [0, 1)), ``log2(1 + x)``
    is approximated by ``x``, the logarithms are added and the antilogarithm is
    approximated the same way: the product is ``1 + x + y`` when ``x + y < 1``,
    else ``2 (x + y)``. It never overestimates; its largest relative error,
    1/9 (11.1%), occurs at ``x = y = 0.5`` (2 instead of 2.25).

    Args:
      m: mantissa bits, 0 to 12.
      force_lowest_bit: set the lowest kept fraction bit of each operand to 1
        before the addition (an unbiasing trick; ApproxTrain's MBM tables use it).
      truncate_result: truncate the product's significand to ``m`` fraction bits
        (as all of ApproxTrain's tables do; its ``MIT_m`` tables are
        ``mitchell(m, truncate_result=True)``).
    """
    m = check_mantissa_bits(m)
    x = _fractions(m, force_lowest_bit)
    s = x[:, None] + x[None, :]
    p = np.where(s < 1, 1 + s, 2 * s)
    name = _param_name("mitchell", m, lsb=force_lowest_bit, trunc=truncate_result)
    return Multiplier(_table(p, m, truncate_result), name=name)


MBM_CORRECTION = 2.0**-4 + 2.0**-6


def mbm(m: int, *, force_lowest_bit: bool = False, truncate_result: bool = False) -> Multiplier:
    """The minimally biased multiplier (MBM).

    H. Saadat, H. Bokhari, S. Parameswaran, "Minimally Biased Multipliers for
    Approximate Integer and Floating-Point Multiplication", IEEE Trans. CAD
    37(11), 2018.

    Mitchell's multiplier plus a constant error-correction term
    ``c = 2**-4 + 2**-6`` that cancels most of its bias. With ``s = x + y``: if
    ``s < 1`` the product is ``1 + s + c``; if the significand sum carries
    (``s >= 1``) the term is halved: ``2 (s + c/2)``. Where adding the term
    would overflow the significand (reach the next power of two) it is left
    out.

    Args:
      m: mantissa bits, 0 to 12.
      force_lowest_bit: set the lowest kept fraction bit of each operand to 1
        before the log-domain addition (ApproxTrain's ``MBM_m`` tables do).
      truncate_result: truncate the product's significand to ``m`` fraction bits.
        ApproxTrain's ``MBM_m`` tables are ``mbm(m, force_lowest_bit=True,
        truncate_result=True)``.
    """
    m = check_mantissa_bits(m)
    x = _fractions(m, force_lowest_bit)
    s = x[:, None] + x[None, :]
    low = np.where(s + MBM_CORRECTION < 1, s + MBM_CORRECTION, s)
    high_f = s - 1 + MBM_CORRECTION / 2
    high = np.where(high_f < 1, high_f, s - 1)
    p = np.where(s < 1, 1 + low, 2 * (1 + high))
    name = _param_name("mbm", m, lsb=force_lowest_bit, trunc=truncate_result)
    return Multiplier(_table(p, m, truncate_result), name=name)


def _check_int_param(name: str, value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{what} needs {lo} <= {name} <= {hi}; got {name}={value!r}")
    return int(value)


def drum(m: int, k: int | None = None) -> Multiplier:
    """A dynamic-range unbiased multiplier (DRUM) on the significands.

    S. Hashemi, R. I. Bahar, S. Reda, "DRUM: A Dynamic Range Unbiased Multiplier
    for Approximate Applications", ICCAD 2015.

    DRUM keeps the ``k`` most significant bits of each operand starting at its
    leading one, sets the lowest kept bit to 1 (which makes the truncation
    error zero-mean) and multiplies the short operands exactly. On a
    significand ``1.f`` the leading one is fixed, so each operand keeps ``k - 1``
    fraction bits, the last forced to 1 whenever lower bits were dropped
    (``k <= m``), and the product is exact. The table is therefore separable,
    ``lut[i, j] == f[i] * f[j]``, and the CPU kernel runs it as a GEMM of the
    transformed operands, without per-tile tables.

    Args:
      m: mantissa bits, 0 to 12.
      k: kept significand bits including the leading one, ``2 <= k <= m + 1``
        (default ``max(2, (m + 1) // 2 + 1)``); ``k = m + 1`` is exact.
    """
    m = check_mantissa_bits(m)
    if m == 0:
        raise ValueError("drum needs m >= 1")
    k = _check_int_param("k", max(2, (m + 1) // 2 + 1) if k is None else k, 2, m + 1, "drum")
    i = np.arange(1 << m, dtype=np.int64)
    drop = m - (k - 1)
    if drop > 0:
        i = ((i >> drop) << drop) | (1 << drop)
    sig = 1.0 + i / float(1 << m)
    return Multiplier(np.outer(sig, sig).astype(np.float32), name=f"drum{m}:k={k}")


def alm_soa(m: int, w: int | None = None) -> Multiplier:
    """Approximate logarithmic multiplier with a set-one adder (ALM-SOA).

    W. Liu, J. Xu, D. Wang, C. Wang, P. Montuschi, F. Lombardi, "Design and
    Evaluation of Approximate Logarithmic Multipliers for Low Power
    Error-Tolerant Applications", IEEE Trans. Circuits and Systems I 65(9), 2018.

    Mitchell's multiplier whose log-domain adder is approximate: the lowest
    ``w`` bits of the fraction sum are set to 1 and produce no carry, the upper
    bits are added exactly. With fractions ``i, j`` as m-bit integers:
    ``t = ((i >> w) + (j >> w)) << w | (2**w - 1)`` and ``s = t / 2**m``; the
    product is ``1 + s`` when ``s < 1``, else ``2 s``. Setting the low bits to 1
    offsets much of Mitchell's negative bias.

    Args:
      m: mantissa bits, 0 to 12.
      w: approximated low bits of the adder, ``0 <= w <= m`` (default ``m // 2``);
        ``w = 0`` is Mitchell's multiplier.
    """
    m = check_mantissa_bits(m)
    w = _check_int_param("w", m // 2 if w is None else w, 0, m, "alm_soa")
    i = np.arange(1 << m, dtype=np.int64)
    t = (((i[:, None] >> w) + (i[None, :] >> w)) << w) | ((1 << w) - 1)
    s = t / float(1 << m)
    p = np.where(s < 1, 1 + s, 2 * s)
    return Multiplier(p.astype(np.float32), name=f"alm_soa{m}:w={w}")


CATALOG = {
    "truncated": truncated,
    "mitchell": mitchell,
    "mbm": mbm,
    "drum": drum,
    "alm_soa": alm_soa,
}

_OPTION_ALIASES = {"lsb": "force_lowest_bit", "trunc": "truncate_result"}


def get(spec: str, m: int | None = None) -> Multiplier:
    """A catalog multiplier by name: ``"mitchell7"``, ``"drum7:k=4"``, or ``get("mbm", 5)``.

    Options after ``:`` are keyword arguments of the constructor, as integers
    (``"mbm7:lsb=1:trunc=1"`` is ``mbm(7, force_lowest_bit=True,
    truncate_result=True)``); a multiplier's ``name`` is such a spec.

    Raises:
      ValueError: unknown name (the message lists the known ones), missing or
        contradictory m, or a bad option.
    """
    if not isinstance(spec, str):
        raise TypeError(f"multiplier name must be a string; got {spec!r}")
    head, *opts = spec.strip().split(":")
    base = head.rstrip("0123456789")
    digits = head[len(base) :]
    if base not in CATALOG:
        known = ", ".join(sorted(CATALOG))
        raise ValueError(f"unknown multiplier {spec!r}; known: {known} (append m, e.g. mitchell7)")
    if digits and m is not None and int(digits) != m:
        raise ValueError(f"{spec!r} names m={digits} but m={m} was given")
    if not digits and m is None:
        raise ValueError(f"{spec!r} needs its mantissa bits: write e.g. {base}7")
    kwargs: dict[str, Any] = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq:
            raise ValueError(f"option {opt!r} of {spec!r} must be key=value")
        key = _OPTION_ALIASES.get(key, key)
        try:
            kwargs[key] = int(value)
        except ValueError as e:
            raise ValueError(f"option {opt!r} of {spec!r} needs an integer value") from e
        if key in ("force_lowest_bit", "truncate_result"):
            kwargs[key] = bool(kwargs[key])
    try:
        return CATALOG[base](int(digits) if digits else m, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad options for {base}: {e}") from e


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
    names = tuple(x.name for x in multipliers)
    return Multiplier._unchecked(lut, bits.pop(), names)
