"""Number formats: the operands, products and accumulators a datapath holds.

A :class:`Format` is a binary floating-point format: exponent bits (1 to 8),
mantissa (fraction) bits (0 to 23), a bias, whether it has infinities, how
it encodes NaN, whether it keeps subnormals, and what overflow gives. Every
value of such a format is exactly a float32, so values "in a format" are
carried as float32 arrays: :func:`convert` rounds float32 values to a format
and returns them as float32.

Rounding (``rounding=``):

* ``"nearest_even"``: to the nearest value, ties to the even one (IEEE's
  default); conversions equal ``ml_dtypes`` bit for bit where it has the
  format (bfloat16, float16, the FP8, FP6 and FP4 formats), NaN, overflow
  and subnormals included;
* ``"toward_zero"``: truncation (a narrow multiplier's input stage);
* ``"away_from_zero"``;
* ``"stochastic"``: up with probability equal to the discarded fraction of a
  quantum (unbiased), from the random bits of an explicit ``key``
  (``jax.random.bits``: reproducible, the same bits on every backend).

Special values:

* NaN stays NaN where the format has one; a format without NaN (FP6, FP4)
  turns it into a zero of the opposite sign (the usual NaN, +NaN, into
  -0.0), as ``ml_dtypes`` does;
* infinity stays infinite where the format has one; otherwise it follows the
  overflow rule;
* overflow (a rounded magnitude above the largest finite value) gives
  infinity (``overflow="inf"``), NaN (``"nan"``: OCP E4M3, which has no
  infinity) or the largest finite value (``"saturate"``: OCP MX FP6/FP4);
  rounding toward zero never overflows (IEEE);
* a result below the smallest normal is kept as a subnormal where the
  format keeps them (rounded at the subnormal quantum), and flushed to a
  zero of its sign where it does not.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ROUNDINGS = ("nearest_even", "toward_zero", "away_from_zero", "stochastic")
NanEncoding = Literal["ieee", "single", "none"]
Overflow = Literal["inf", "nan", "saturate"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Format:
    """A binary floating-point format whose values are float32 values.

    Args:
      exponent_bits: 1 to 8.
      mantissa_bits: fraction bits, 0 to 23.
      bias: exponent bias (default ``2**(exponent_bits - 1) - 1``).
      has_inf: whether the all-ones exponent with a zero fraction is infinity.
      nan: ``"ieee"`` (the all-ones exponent with a nonzero fraction is NaN),
        ``"single"`` (only the all-ones exponent and fraction are NaN; the rest
        of that binade is finite: OCP E4M3) or ``"none"``.
      subnormals: whether values below the smallest normal are kept.
      overflow: ``"inf"``, ``"nan"`` or ``"saturate"`` (see the module docstring).
      name: a name for reports (default ``e{exponent_bits}m{mantissa_bits}``).

    Raises:
      ValueError: a field out of range, or an inconsistent combination (an
        infinity without IEEE NaN encoding, overflow to what the format does
        not have, values that float32 cannot hold).

    Example::

      >>> from approxjax import formats
      >>> fp7 = formats.Format(exponent_bits=4, mantissa_bits=2, name="e4m2")
      >>> fp7.max
      240.0
    """

    exponent_bits: int
    mantissa_bits: int
    bias: int | None = None
    has_inf: bool = True
    nan: NanEncoding = "ieee"
    subnormals: bool = True
    overflow: Overflow = "inf"
    name: str = ""

    def __post_init__(self):
        for field, lo, hi in (("exponent_bits", 1, 8), ("mantissa_bits", 0, 23)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{field} must be an int; got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{field} must be in [{lo}, {hi}]; got {value}")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exponent_bits - 1) - 1)
        if self.nan not in ("ieee", "single", "none"):
            raise ValueError(f"nan must be 'ieee', 'single' or 'none'; got {self.nan!r}")
        if self.overflow not in ("inf", "nan", "saturate"):
            raise ValueError(f"overflow must be 'inf', 'nan' or 'saturate'; got {self.overflow!r}")
        if self.has_inf and self.nan != "ieee":
            raise ValueError("a format with infinities encodes NaN the IEEE way (nan='ieee')")
        if self.overflow == "inf" and not self.has_inf:
            raise ValueError("overflow='inf' needs a format with infinities (has_inf=True)")
        if self.overflow == "nan" and self.nan == "none":
            raise ValueError("overflow='nan' needs a format with a NaN")
        if self.emax > 127 or self.emin - self.mantissa_bits < -149:
            raise ValueError(
                f"{self.describe()} has values float32 cannot hold (exponents {self.emin} "
                f"to {self.emax}, fraction bits {self.mantissa_bits})"
            )
        if not self.name:
            object.__setattr__(self, "name", f"e{self.exponent_bits}m{self.mantissa_bits}")

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal value."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite binade."""
        top = 2**self.exponent_bits - 1
        reserved = self.has_inf or self.nan == "ieee"
        return (top - 1 if reserved else top) - self.bias

    @property
    def max(self) -> float:
        """The largest finite value."""
        m = self.mantissa_bits
        top = 2.0 - 2.0 ** (1 - m) if self.nan == "single" else 2.0 - 2.0**-m
        if self.nan == "single" and m == 0:
            top = 1.0  # the only fraction of the top binade is NaN
            return float(np.ldexp(top, self.emax - 1))
        return float(np.ldexp(top, self.emax))

    @property
    def smallest_normal(self) -> float:
        return float(np.ldexp(1.0, self.emin))

    @property
    def smallest_subnormal(self) -> float:
        return float(np.ldexp(1.0, self.emin - self.mantissa_bits))

    @property
    def is_float32(self) -> bool:
        """Whether this is float32 itself (converting to it changes nothing)."""
        return (
            self.exponent_bits == 8
            and self.mantissa_bits == 23
            and self.bias == 127
            and self.has_inf
            and self.subnormals
            and self.overflow == "inf"
        )

    def describe(self) -> str:
        return (
            f"{self.name or 'format'} (e{self.exponent_bits}m{self.mantissa_bits}, bias "
            f"{self.bias})"
        )

    def __repr__(self) -> str:
        return f"Format({self.name})"


def _mx_element(exponent_bits: int, mantissa_bits: int) -> Format:
    """An OCP MX element format (FP6, FP4): no inf, no NaN, overflow saturates."""
    return Format(
        exponent_bits=exponent_bits,
        mantissa_bits=mantissa_bits,
        has_inf=False,
        nan="none",
        overflow="saturate",
        name=f"e{exponent_bits}m{mantissa_bits}",
    )


_PRESETS = {
    "float32": Format(exponent_bits=8, mantissa_bits=23, name="float32"),
    "tf32": Format(exponent_bits=8, mantissa_bits=10, name="tf32"),
    "bfloat16": Format(exponent_bits=8, mantissa_bits=7, name="bfloat16"),
    "float16": Format(exponent_bits=5, mantissa_bits=10, name="float16"),
    "e4m3": Format(
        exponent_bits=4, mantissa_bits=3, has_inf=False, nan="single", overflow="nan", name="e4m3"
    ),
    "e5m2": Format(exponent_bits=5, mantissa_bits=2, name="e5m2"),
    "e2m3": _mx_element(2, 3),
    "e3m2": _mx_element(3, 2),
    "e2m1": _mx_element(2, 1),
}
_ALIASES = {
    "fp32": "float32",
    "f32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "f16": "float16",
    "half": "float16",
    "fp8_e4m3": "e4m3",
    "fp8_e5m2": "e5m2",
    "fp6_e2m3": "e2m3",
    "fp6_e3m2": "e3m2",
    "fp4_e2m1": "e2m1",
    "e4m3fn": "e4m3",
}
# The ml_dtypes (or NumPy) twin of each preset with one (the tests compare bit for bit).
ML_DTYPES = {
    "bfloat16": "bfloat16",
    "float16": "float16",  # numpy's
    "e4m3": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
    "e2m3": "float6_e2m3fn",
    "e3m2": "float6_e3m2fn",
    "e2m1": "float4_e2m1fn",
}


def presets() -> dict[str, Format]:
    """The preset formats by name."""
    return dict(_PRESETS)


def get(name: str | Format) -> Format:
    """A preset by name (``"float32"``, ``"tf32"``, ``"bfloat16"``, ``"float16"``,
    ``"e4m3"``, ``"e5m2"``, ``"e2m3"``, ``"e3m2"``, ``"e2m1"``, or an alias such
    as ``"bf16"``), or ``"eXmY"`` for an IEEE-style custom format with X
    exponent and Y mantissa bits; a Format is returned as it is.

    Raises:
      ValueError: an unknown name (the message lists the presets).
    """
    if isinstance(name, Format):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a format is a Format or a name; got {name!r}")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key in _PRESETS:
        return _PRESETS[key]
    parts = key[1:].split("m") if key.startswith("e") else []
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return Format(exponent_bits=int(parts[0]), mantissa_bits=int(parts[1]))
    known = ", ".join(list(_PRESETS) + sorted(_ALIASES))
    raise ValueError(f"unknown format {name!r}; known: {known}, or eXmY (custom)")


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}; got {rounding!r}")
    return rounding


_U32 = jnp.uint32


def _round_quanta(sig, shift, rounding, rand):
    """``sig / 2**shift`` rounded to an integer (sig < 2**24, shift >= 0)."""
    big = shift >= 31
    s = jnp.minimum(shift, 31).astype(_U32)
    whole = jnp.where(big, _U32(0), sig >> s)
    mask = jnp.where(big, _U32(0xFFFFFFFF), (_U32(1) << s) - _U32(1))
    frac = sig & mask
    if rounding == "toward_zero":
        return whole
    if rounding == "away_from_zero":
        return whole + (frac != 0).astype(_U32)
    if rounding == "stochastic":
        # Up with probability frac / 2**shift: the random draw, as many bits
        # as the shift (31 at most), below the fraction.
        return whole + ((rand & mask) < frac).astype(_U32)
    half = jnp.where(big, _U32(0xFFFFFFFF), _U32(1) << (s - _U32(1)))
    above = (frac > half) | ((frac == half) & ((whole & 1) == 1))
    above = jnp.where(shift == 0, False, above)
    return whole + above.astype(_U32)


def _rounded_magnitude(bits, fmt: Format, rounding: str, key):
    """|x| rounded at the format's quantum by the mode (any mode and
    format): float32 bits, before overflow (NaN and inf give garbage)."""
    expo = ((bits >> 23) & _U32(0xFF)).astype(jnp.int32)
    frac = bits & _U32(0x7FFFFF)
    normal = expo > 0
    sig = jnp.where(normal, frac | _U32(0x800000), frac)  # float32 subnormals: no hidden bit
    e = jnp.where(normal, expo - 127, -126)  # value = sig * 2**(e - 23)
    m = fmt.mantissa_bits
    q = jnp.maximum(e, fmt.emin) - m  # the quantum's exponent at this magnitude
    shift = jnp.maximum(23 + q - e, 0)
    stochastic = rounding == "stochastic"
    rand = jax.random.bits(key, bits.shape, _U32) if stochastic else jnp.zeros((), _U32)
    n = _round_quanta(sig, shift, rounding, rand)  # value = n * 2**q, n < 2**25
    # n * 2**q as float32 bits, built with integers (no flush-to-zero).
    lead = 31 - lax.clz(jnp.maximum(n, _U32(1))).astype(jnp.int32)  # n's top bit
    rexp = q + lead  # unbiased exponent of the result
    normal_bits = ((rexp + 127).astype(_U32) << 23) | (
        (n << jnp.clip(23 - lead, 0, 31).astype(_U32)) & _U32(0x7FFFFF)
    )
    sub_shift = jnp.clip(q + 149, 0, 31).astype(_U32)
    sub_bits = n << sub_shift  # float32 subnormal: n * 2**q = (n << (q + 149)) * 2**-149
    return jnp.where(n == 0, _U32(0), jnp.where(rexp >= -126, normal_bits, sub_bits))


def _nearest_by_bits(fmt: Format) -> bool:
    """Whether _nearest_magnitude serves the format: float32's exponent
    range (its subnormals are float32's, rounded by the same integer rule),
    or a narrower one whose subnormal quantum is a normal float32; and at
    least one mantissa bit (with none, a tie rounds up, as the general rule
    has it, not to an even exponent)."""
    quantum = fmt.emin - fmt.mantissa_bits
    wide = fmt.emin == -126
    narrow = fmt.emin > -126 and -126 <= quantum and quantum + 23 <= 127
    return fmt.mantissa_bits >= 1 and (wide or narrow)


def _nearest_magnitude(bits, fmt: Format):
    """_rounded_magnitude nearest-even, in a few operations: the magnitude's
    bits rounded at the format's last fraction bit (a carry into the
    exponent is the next binade, as it should be), and below the format's
    smallest normal a float addition that rounds at its subnormal quantum
    q: |x| + 1.5 * 2**(q + 23) has ulp 2**q there (exact, and normal, so
    XLA's flush of float32 subnormals cannot touch it; a float32 subnormal
    |x| is far below q / 2 and rounds to zero either way)."""
    low = (1 << (23 - fmt.mantissa_bits)) - 1
    a = bits & _U32(0x7FFFFFFF)
    mag = a  # with 23 fraction bits, a normal float32 is the format's already
    if low:
        lsb = (a >> _U32(23 - fmt.mantissa_bits)) & _U32(1)
        mag = (a + _U32(low >> 1) + lsb) & _U32(~low & 0xFFFFFFFF)
    if fmt.emin == -126:
        return mag
    magic = np.float32(1.5 * 2.0 ** (fmt.emin - fmt.mantissa_bits + 23))
    absx = lax.bitcast_convert_type(a, jnp.float32)
    # (The barrier keeps XLA from simplifying (|x| + c) - c to |x|.)
    sub = lax.bitcast_convert_type(lax.optimization_barrier(absx + magic) - magic, _U32)
    return jnp.where(a < _U32(np.float32(2.0**fmt.emin).view(np.uint32)), sub, mag)


def convert(
    x: jax.Array,
    format: Format | str,
    rounding: str = "nearest_even",
    key: jax.Array | None = None,
) -> jax.Array:
    """The values of ``x`` rounded to ``format``, as float32 (see the module docstring).

    Args:
      x: float32, bfloat16 or float16 values (any shape).
      format: a :class:`Format` or a preset's name.
      rounding: ``"nearest_even"``, ``"toward_zero"``, ``"away_from_zero"`` or
        ``"stochastic"``.
      key: a ``jax.random`` key, needed by (and only by) stochastic rounding.

    Raises:
      ValueError: an unknown format or rounding, or stochastic rounding
        without a key.
    """
    fmt = get(format)
    check_rounding(rounding)
    if rounding == "stochastic" and key is None:
        raise ValueError("stochastic rounding needs a key (jax.random.key(...))")
    x = jnp.asarray(x)
    if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise TypeError(f"convert takes float32, bfloat16 or float16 values; got {x.dtype}")
    x = x.astype(jnp.float32)
    if fmt.is_float32 and rounding != "stochastic":
        return x
    bits = lax.bitcast_convert_type(x, _U32)
    sign = bits & _U32(0x80000000)
    is_nan = (bits & _U32(0x7FFFFFFF)) > _U32(0x7F800000)
    is_inf = (bits & _U32(0x7FFFFFFF)) == _U32(0x7F800000)
    if rounding == "nearest_even" and _nearest_by_bits(fmt):
        mag = _nearest_magnitude(bits, fmt)
    else:
        mag = _rounded_magnitude(bits, fmt, rounding, key)
    value = lax.bitcast_convert_type(mag, jnp.float32)
    if not fmt.subnormals:
        mag = jnp.where(value < fmt.smallest_normal, _U32(0), mag)
        value = lax.bitcast_convert_type(mag, jnp.float32)
    over = value > fmt.max
    if rounding == "toward_zero":
        top = jnp.where(over, _U32(np.float32(fmt.max).view(np.uint32)), mag)
    else:
        if fmt.overflow == "inf":
            big = _U32(0x7F800000)
        elif fmt.overflow == "nan":
            big = _U32(0x7FC00000)
        else:
            big = _U32(np.float32(fmt.max).view(np.uint32))
        top = jnp.where(over, big, mag)
    out = sign | top
    if fmt.has_inf:
        inf_bits = sign | _U32(0x7F800000)
    elif fmt.overflow == "nan":
        inf_bits = _U32(0x7FC00000)
    else:
        inf_bits = sign | _U32(np.float32(fmt.max).view(np.uint32))
    out = jnp.where(is_inf, inf_bits, out)
    # No NaN: a zero of the opposite sign, as ml_dtypes converts it.
    nan_bits = _U32(0x7FC00000) if fmt.nan != "none" else (~sign) & _U32(0x80000000)
    out = jnp.where(is_nan, nan_bits, out)
    # A NaN produced by overflow carries no sign (as ml_dtypes gives it).
    out = jnp.where((out & _U32(0x7FFFFFFF)) > _U32(0x7F800000), _U32(0x7FC00000), out)
    return lax.bitcast_convert_type(out, jnp.float32)


def is_representable(x: np.ndarray, format: Format | str) -> np.ndarray:
    """Whether each float32 value is exactly a value of ``format`` (NumPy)."""
    x = np.asarray(x, np.float32)
    got = np.asarray(convert(x, format))
    return (got.view(np.uint32) == x.view(np.uint32)) | (np.isnan(got) & np.isnan(x))
