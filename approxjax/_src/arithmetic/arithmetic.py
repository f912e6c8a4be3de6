"""The arithmetic of one GEMM: operand formats, multiplier, product rounding,
accumulator and adder, in one config (:class:`Arithmetic`).

A simulated GEMM output is computed as the hardware would:

1. each operand is converted to its format (``lhs``, ``rhs``; rounding
   ``operand_rounding``; None: float32, unchanged);
2. each product is the multiplier's (its table indexes the top m bits of the
   converted significands; a subnormal of a narrow format is a normal float32
   and is looked up after normalisation), or with no multiplier the IEEE
   float32 product of the converted operands (exact for formats of up to 11
   mantissa bits);
3. the product may be rounded to a ``product`` format (None: kept exact);
4. the products are summed in order of k (blocks of 4096, see
   :mod:`approxjax.reference`) in the ``accumulator`` format: after every
   addition the exact sum of the running sum and the product is rounded once
   to that format (``accumulator_rounding``), as an adder of that format does
   (no double rounding through float32). None: float32, nearest-even (today's
   sums, bit for bit). An approximate ``adder`` replaces the exact addition:
   :class:`LOA` (lower-part OR) or a C model (:func:`adder_from_c`).

``Arithmetic`` is accepted wherever a :class:`~approxjax.Multiplier` is; a
bare Multiplier means ``Arithmetic(multiplier=it)``. It is a pytree: the
multiplier's table and the random key are leaves (traced, vmapped), the
formats and modes are static, so ``stack`` of configs that share formats and
differ in tables runs as one kernel call.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp

from approxjax._src.arithmetic.formats import Format, check_rounding, convert, get
from approxjax._src.arithmetic.integer import IntegerMultiplier, stack_integer
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.arithmetic.multipliers import stack as stack_multipliers
from approxjax._src.arithmetic.quantization import Quantized, stack_quantized
from approxjax._src.kernels.options import ArithmeticAttribute


@dataclasses.dataclass(frozen=True)
class LOA:
    """A lower-part OR adder (Mahdiani et al., IEEE TCAS-I 57(4), 2010), in the
    accumulator's floating-point format.

    The two significands are aligned to the larger exponent at the format's
    precision (bits shifted out below it are dropped, as a simple alignment
    shifter does); when the signs agree, the ``bits`` lowest bits of the
    aligned significands are ORed instead of added (no carry out of them) and
    the upper bits are added exactly; when they differ the subtraction is
    exact. The result is normalised and rounded to the accumulator format.

    Args:
      bits: approximated low bits, 1 to 23.
    """

    bits: int

    def __post_init__(self):
        if (
            isinstance(self.bits, bool)
            or not isinstance(self.bits, int)
            or not 1 <= self.bits <= 23
        ):
            raise ValueError(f"LOA needs 1 <= bits <= 23; got {self.bits!r}")

    @property
    def name(self) -> str:
        return f"loa{self.bits}"


@dataclasses.dataclass(frozen=True, eq=False)
class CAdder:
    """A user adder model ``float add(float acc, float x)`` compiled from C
    (see :func:`approxjax.adder_from_c`): the kernel calls it for every
    addition of a GEMM's sums, in order."""

    function: str
    digest: str
    address: int  # of the loaded function, for the CPU kernel
    handle: Any = dataclasses.field(repr=False, default=None)  # keeps the library loaded

    @property
    def name(self) -> str:
        return f"{self.function}@{self.digest[:8]}"

    def __eq__(self, other):
        return isinstance(other, CAdder) and other.digest == self.digest

    def __hash__(self):
        return hash((CAdder, self.digest))


Adder = LOA | CAdder


# How a GEMM runs (approxjax.dot_general's method=; approxjax._src.ops.native).
Method = Literal["auto", "lut", "native"]
METHODS = ("auto", "lut", "native")


def check_method(value: Any, what: str = "method") -> str | None:
    """``value`` as a method (None: each arithmetic's own)."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in METHODS:
        raise ValueError(f"{what} must be 'auto', 'lut' or 'native'; got {value!r}")
    return value


def _format(value: Any, what: str) -> Format | None:
    if value is None:
        return None
    try:
        fmt = get(value)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{what}: {e}") from e
    return None if fmt.is_float32 else fmt


@dataclasses.dataclass(frozen=True)
class GemmSpec:
    """The static part of an Arithmetic (hashable: part of the compiled program)."""

    lhs: Format | None
    rhs: Format | None
    operand_rounding: str
    product: Format | None
    product_rounding: str
    accumulator: Format | None
    accumulator_rounding: str
    adder: Adder | None
    has_multiplier: bool
    mantissa_bits: int | None
    method: str = "auto"

    @property
    def default_sums(self) -> bool:
        """Products summed exactly in float32, nearest-even (today's kernels)."""
        return (
            self.product is None
            and self.accumulator is None
            and self.accumulator_rounding == "nearest_even"
            and self.adder is None
        )

    @property
    def stochastic(self) -> bool:
        return "stochastic" in (
            self.operand_rounding,
            self.product_rounding if self.product is not None else "",
            self.accumulator_rounding,
        )


@jax.tree_util.register_pytree_node_class
class Arithmetic:
    """Operand formats, multiplier, product rounding, accumulator and adder of
    a GEMM (see the module docstring). Keyword-only; None means float32 /
    exact, as today.

    Args:
      multiplier: a Multiplier (or a stack), or None for IEEE float32 products.
      lhs, rhs: operand formats (a :class:`~approxjax.formats.Format` or a
        name such as ``"e4m3"``).
      operand_rounding: how operands are converted to their formats.
      product: a format each product is rounded to, or None.
      product_rounding: its rounding.
      accumulator: the format of the running sums, or None (float32).
      accumulator_rounding: its rounding (every addition rounds once).
      adder: None (exact addition), ``LOA(bits)`` or an adder from C.
      key: a ``jax.random`` key, needed by stochastic rounding (a leaf: pass
        a new key per step for fresh noise).
      method: how GEMMs under it run: ``"auto"``, ``"lut"`` (the kernel) or
        ``"native"`` (a few XLA dots of transformed operands, for a table with
        low-rank factors; see :func:`approxjax.dot_general`). A call's own
        ``method=`` overrides it; a :class:`~approxjax.Policy` that maps layers
        to arithmetics sets it per layer.

    Raises:
      ValueError: an unknown format or rounding, stochastic rounding without a
        key, a C adder with an accumulator format other than float32.
      TypeError: a multiplier that is not a Multiplier.

    Example::

      >>> import approxjax as ax
      >>> fp8 = ax.Arithmetic(lhs="e4m3", rhs="e4m3", accumulator="bfloat16")
    """

    __slots__ = ("multiplier", "key", "spec")

    def __init__(
        self,
        *,
        multiplier: Multiplier | None = None,
        lhs: Format | str | None = None,
        rhs: Format | str | None = None,
        operand_rounding: str = "nearest_even",
        product: Format | str | None = None,
        product_rounding: str = "nearest_even",
        accumulator: Format | str | None = None,
        accumulator_rounding: str = "nearest_even",
        adder: Adder | None = None,
        key: jax.Array | None = None,
        method: str = "auto",
    ):
        if multiplier is not None and not isinstance(multiplier, Multiplier):
            raise TypeError(
                f"Arithmetic(multiplier=...) takes a Multiplier or None; got {multiplier!r}"
            )
        if adder is not None and not isinstance(adder, (LOA, CAdder)):
            raise TypeError(
                f"adder must be approxjax.LOA(...), an adder from C or None; got {adder!r}"
            )
        spec = GemmSpec(
            lhs=_format(lhs, "lhs"),
            rhs=_format(rhs, "rhs"),
            operand_rounding=check_rounding(operand_rounding),
            product=_format(product, "product"),
            product_rounding=check_rounding(product_rounding),
            accumulator=_format(accumulator, "accumulator"),
            accumulator_rounding=check_rounding(accumulator_rounding),
            adder=adder,
            has_multiplier=multiplier is not None,
            mantissa_bits=None if multiplier is None else multiplier.mantissa_bits,
            method=check_method(method, "Arithmetic(method=...)"),
        )
        if isinstance(adder, CAdder) and spec.accumulator is not None:
            raise ValueError(
                "a C adder computes the whole addition: leave accumulator=None (its result "
                f"is the new float32 sum); got accumulator={spec.accumulator.name}"
            )
        if spec.stochastic and key is None:
            raise ValueError("stochastic rounding needs key=jax.random.key(...)")
        if multiplier is not None:
            for side, fmt in (("lhs", spec.lhs), ("rhs", spec.rhs)):
                if fmt is not None and multiplier.mantissa_bits > fmt.mantissa_bits:
                    warnings.warn(
                        f"{multiplier.name} indexes {multiplier.mantissa_bits} mantissa bits but "
                        f"the {side} format {fmt.name} has {fmt.mantissa_bits}: the table's "
                        "other rows/columns are never used (a multiplier of m = "
                        f"{fmt.mantissa_bits} simulates the same)",
                        stacklevel=2,
                    )
        self.multiplier = multiplier
        self.key = key
        self.spec = spec

    @classmethod
    def _from(cls, multiplier, key, spec) -> Arithmetic:
        obj = object.__new__(cls)
        obj.multiplier, obj.key, obj.spec = multiplier, key, spec
        return obj

    def replace(self, **changes) -> Arithmetic:
        """A copy with some fields changed (``multiplier=``, ``key=``, formats...)."""
        s = self.spec
        fields = dict(
            multiplier=self.multiplier,
            lhs=s.lhs,
            rhs=s.rhs,
            operand_rounding=s.operand_rounding,
            product=s.product,
            product_rounding=s.product_rounding,
            accumulator=s.accumulator,
            accumulator_rounding=s.accumulator_rounding,
            adder=s.adder,
            key=self.key,
            method=s.method,
        )
        fields.update(changes)
        return Arithmetic(**fields)

    @property
    def name(self) -> str:
        """``mitchell7`` or, with formats, ``mitchell7[e4m3 x e4m3, acc bfloat16]``."""
        s = self.spec
        base = "exact" if self.multiplier is None else self.multiplier.name
        parts = []
        if s.lhs or s.rhs:
            parts.append(f"{(s.lhs or _F32).name} x {(s.rhs or _F32).name}")
        if s.product:
            parts.append(f"product {s.product.name}")
        if s.accumulator or s.accumulator_rounding != "nearest_even":
            acc = (s.accumulator or _F32).name
            rounding = (
                "" if s.accumulator_rounding == "nearest_even" else f" {s.accumulator_rounding}"
            )
            parts.append(f"acc {acc}{rounding}")
        if s.adder is not None:
            parts.append(f"adder {s.adder.name}")
        if s.method != "auto":
            parts.append(s.method)
        return base + (f"[{', '.join(parts)}]" if parts else "")

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return () if self.multiplier is None else self.multiplier.batch_shape

    def __len__(self) -> int:
        if not self.batch_shape:
            raise TypeError(f"{self.name} is a single arithmetic, not a stack")
        return self.batch_shape[0]

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"Arithmetic({self.name!r})"

    def tree_flatten(self):
        return (self.multiplier, self.key), self.spec

    @classmethod
    def tree_unflatten(cls, spec, children):
        return cls._from(children[0], children[1], spec)


def operand_keys(key, spec: GemmSpec):
    """Independent keys for the lhs, the rhs and the sums' seed."""
    if key is None or not spec.stochastic:
        return None, None, None
    if jnp.issubdtype(jax.typeof(key).dtype, jax.dtypes.prng_key):
        ka, kb, kn = jax.random.split(key, 3)
        return ka, kb, jax.random.key_data(kn).reshape(-1)[:2]
    ka, kb, kn = jax.random.split(jax.random.wrap_key_data(key), 3)
    return ka, kb, jax.random.key_data(kn).reshape(-1)[:2]


def fold_in_key(key, salt: int):
    """``key`` folded with ``salt`` (an operation's index, a GEMM's role):
    independent rounding noise for each GEMM that shares an Arithmetic."""
    if key is None:
        return None
    if jnp.issubdtype(jax.typeof(key).dtype, jax.dtypes.prng_key):
        return jax.random.fold_in(key, salt)
    return jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(key), salt))


def salted(value: Any, salt: int) -> Any:
    """A multiplier argument whose stochastic key is folded with ``salt``."""
    if isinstance(value, Arithmetic) and value.key is not None:
        return Arithmetic._from(value.multiplier, fold_in_key(value.key, salt), value.spec)
    return value


def convert_operands(a, b, spec: GemmSpec, key):
    """The operands converted to the spec's formats (and the sums' seed)."""
    ka, kb, noise = operand_keys(key, spec)
    if spec.lhs is not None:
        a = convert(a, spec.lhs, spec.operand_rounding, ka)
    if spec.rhs is not None:
        b = convert(b, spec.rhs, spec.operand_rounding, kb)
    return a, b, noise


_F32 = Format(exponent_bits=8, mantissa_bits=23, name="float32")


def as_arithmetic(value: Any) -> Arithmetic | None:
    """None, or the Arithmetic a multiplier argument means (a Multiplier:
    ``Arithmetic(multiplier=it)``)."""
    if value is None or isinstance(value, Arithmetic):
        return value
    if isinstance(value, Multiplier):
        return Arithmetic._from(
            value,
            None,
            GemmSpec(None, None, "nearest_even", None, "nearest_even", None, "nearest_even",
                     None, True, value.mantissa_bits),
        )  # fmt: skip
    raise TypeError(f"expected a Multiplier, an Arithmetic or None; got {value!r}")


def sized_to_operands(arith: Arithmetic) -> Arithmetic:
    """``arith`` with its table subsampled to the operand formats' mantissa
    bits where both formats have fewer than the table's m: the same products
    (the table's other rows and columns are never read), from a smaller table
    that the kernels sweep faster (:meth:`Multiplier.subsampled`)."""
    spec, mult = arith.spec, arith.multiplier
    if mult is None or spec.lhs is None or spec.rhs is None:
        return arith
    bits = max(spec.lhs.mantissa_bits, spec.rhs.mantissa_bits)
    if bits >= mult.mantissa_bits:
        return arith
    sized = dataclasses.replace(spec, mantissa_bits=bits)
    return Arithmetic._from(mult.subsampled(bits), arith.key, sized)


def stack(items: Sequence[Multiplier | Arithmetic]) -> Multiplier | Arithmetic:
    """A stack for ``jax.vmap`` sweeps: of multipliers with one m, of
    arithmetics that share their formats and modes and differ in tables, or
    of integer multipliers with the same widths and signedness.

    Raises:
      ValueError: an empty list, different m, or arithmetics that differ in
        more than their tables.
    """
    items = list(items)
    if items and all(isinstance(x, Multiplier) for x in items):
        return stack_multipliers(items)
    if items and any(isinstance(x, IntegerMultiplier) for x in items):
        return stack_integer(items)
    if items and any(isinstance(x, Quantized) for x in items):
        return stack_quantized(items)
    if not items:
        raise ValueError("stack needs at least one multiplier")
    arith = [as_arithmetic(x) for x in items]
    first = arith[0].spec
    for a in arith[1:]:
        if a.spec != first:
            raise ValueError(
                f"stacked arithmetics must share formats, modes and adder: {arith[0].name} and "
                f"{a.name} differ"
            )
    if arith[0].multiplier is None:
        raise ValueError("stack arithmetics with multipliers; these have none")
    mult = stack_multipliers([a.multiplier for a in arith])
    keys = [a.key for a in arith]
    key = None if keys[0] is None else jax.numpy.stack(keys)
    return Arithmetic._from(mult, key, first)


def c_adder(library, entry: str, *, digest: str, name: str) -> CAdder:
    """Wraps the function ``entry`` of a loaded adder library (see
    :func:`approxjax.adder_from_c`)."""
    import ctypes

    address = ctypes.cast(getattr(library, entry), ctypes.c_void_p).value
    return CAdder(function=name, digest=digest, address=int(address), handle=library)


def kernel_attribute(spec: GemmSpec) -> ArithmeticAttribute:
    """The GEMM targets' ``arithmetic`` attribute for ``spec``."""
    rounding = {"nearest_even": 0, "toward_zero": 1, "away_from_zero": 2, "stochastic": 3}

    def fmt(prefix: str, f: Format | None, mode: str) -> dict:
        f = f or _F32
        return {
            f"{prefix}_m": f.mantissa_bits,
            f"{prefix}_emin": f.emin,
            f"{prefix}_max": float(f.max),
            f"{prefix}_subnormals": bool(f.subnormals),
            f"{prefix}_overflow": {"inf": 0, "nan": 1, "saturate": 2}[f.overflow],
            f"{prefix}_nan": 0 if f.nan != "none" else 2,
            f"{prefix}_inf": bool(f.has_inf),
            f"{prefix}_rounding": rounding[mode],
        }

    adder = spec.adder
    # IEEE products of operands of a and b significant bits have at most a + b,
    # and are multiples of the operands' least quanta multiplied.
    lhs, rhs = spec.lhs or _F32, spec.rhs or _F32
    operand_bits = lhs.mantissa_bits + 1 + rhs.mantissa_bits + 1
    product_exponent = lhs.emin - lhs.mantissa_bits + rhs.emin - rhs.mantissa_bits
    products_exact = (
        not spec.has_multiplier
        and operand_bits <= 24
        and product_exponent >= -149
        and lhs.max * rhs.max < 2.0**127
    )
    return ArithmeticAttribute(
        enabled=not spec.default_sums or not spec.has_multiplier,
        exact_product=not spec.has_multiplier,
        product_bits=operand_bits if not spec.has_multiplier else 24,
        product_exponent=product_exponent,
        products_exact=products_exact,
        product=spec.product is not None,
        adder=0 if adder is None else 1 if isinstance(adder, LOA) else 2,
        loa_bits=adder.bits if isinstance(adder, LOA) else 0,
        adder_address=adder.address if isinstance(adder, CAdder) else 0,
        **fmt("acc", spec.accumulator, spec.accumulator_rounding),
        **fmt("prod", spec.product, spec.product_rounding),
    )
