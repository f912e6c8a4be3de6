"""Built-in integer multipliers, written by us from the cited papers.

Every design is an unsigned core on operand magnitudes; a signed multiplier
applies it to ``|a|`` and ``|b|`` and gives the product the sign of ``a * b``
(sign-magnitude, as DRUM and most published signed designs of these families
do). An ``n``-bit signed operand's magnitude needs all ``n`` bits (``|-128|``
is 128), so the core runs at the full width. Each has a C twin in ``luts/``
(``int_*.c``) that ``tests/test_integer.py`` builds with
:func:`approxjax.from_c` and compares with the table entry by entry. Above
12 bits a design is its C twin as a function model (the twins ship in the
package), checked at construction against this module's NumPy definition
on random operand pairs and every pair of extreme values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from approxjax._src.arithmetic.integer import (
    MAX_TABLE_BITS,
    IntegerMultiplier,
    check_bits,
    check_signed,
    code_range,
    tabulate,
)


def _leading_one(x: np.ndarray) -> np.ndarray:
    """Position of the leading one of each positive x (0 for x <= 1)."""
    out = np.zeros(x.shape, np.int64)
    y = x.copy()
    for shift in (32, 16, 8, 4, 2, 1):
        big = y >= (np.int64(1) << shift)
        out = np.where(big, out + shift, out)
        y = np.where(big, y >> shift, y)
    return out


# Each design's C twin in luts/: file, function, and its macros from the
# design's parameters.
_TWINS = {
    "exact": ("int_exact.c", "exact_imul", {}),
    "truncated": ("int_array.c", "array_imul", {"k": "BAM_VBL"}),
    "bam": ("int_array.c", "array_imul", {"hbl": "BAM_HBL", "vbl": "BAM_VBL"}),
    "drum": ("int_drum.c", "drum_imul", {"k": "DRUM_K"}),
    "mitchell": ("int_mitchell.c", "mitchell_imul", {}),
    "kulkarni": ("int_kulkarni.c", "kulkarni_imul", {}),
}

# Random operand pairs on which a wide design's twin must equal the NumPy
# definition (besides every pair of extreme values), and whether every code
# of each operand is also paired with the other's extreme values (2 x 5 x
# 65536 pairs at 16 bits: the slow tests turn it on, with 4M samples).
_TWIN_SAMPLES = 4096
_TWIN_LINES = False


def twins_dir() -> Path:
    """The folder of the catalog's C twins: ``approxjax/luts`` in an
    installed wheel (CMakeLists.txt installs them there), ``luts/`` beside
    the package in a source checkout."""
    package = Path(__file__).resolve().parents[2]
    for folder in (package / "luts", package.parent / "luts"):
        if (folder / "int_common.h").is_file():
            return folder
    raise FileNotFoundError(
        f"the integer catalog's C twins (int_*.c) are in neither {package / 'luts'} nor "
        f"{package.parent / 'luts'}: reinstall approxjax"
    )


def _wide(fn, pair, sign, design: str, full_name: str, paper: str, params) -> IntegerMultiplier:
    """A design over 12 bits: its C twin as a function model, checked against
    the NumPy definition ``fn`` (RuntimeError naming the first pair where
    they differ)."""
    from approxjax._src.tools.c_models import from_c

    source, function, macros = _TWINS[design]
    flags = [f"-D{macros[key]}={value}" for key, value in params.items()]
    mult = from_c(twins_dir() / source, function, bits=pair, signed=sign, name=full_name,
                  flags=flags)  # fmt: skip
    rng = np.random.default_rng(0)
    ranges = [code_range(pair[i], sign[i]) for i in (0, 1)]
    extremes = [np.unique([lo, -1 if lo < 0 else 0, 0, 1, hi]) for lo, hi in ranges]
    pairs = [np.meshgrid(*extremes, indexing="ij")]
    if _TWIN_LINES:
        every = [np.arange(lo, hi + 1) for lo, hi in ranges]
        pairs += [np.meshgrid(every[0], extremes[1]), np.meshgrid(extremes[0], every[1])]
    a = np.concatenate([p[0].ravel() for p in pairs] +
                       [rng.integers(ranges[0][0], ranges[0][1] + 1, _TWIN_SAMPLES)])  # fmt: skip
    b = np.concatenate([p[1].ravel() for p in pairs] +
                       [rng.integers(ranges[1][0], ranges[1][1] + 1, _TWIN_SAMPLES)])  # fmt: skip
    got, want = mult.products(a, b), fn(a, b)
    bad = np.flatnonzero(got != want)
    if bad.size:
        i = bad[0]
        raise RuntimeError(
            f"{full_name}: the C twin {source} gives {int(got[i])} for {int(a[i])} x {int(b[i])} "
            f"where the catalog's definition gives {int(want[i])}"
        )
    metadata = {**mult.metadata, "source": "catalog", "design": design, "paper": paper,
                "twin": source, **params}  # fmt: skip
    return IntegerMultiplier.function_model(
        mult.function, bits=pair, signed=sign, name=full_name, metadata=metadata
    )


def _make(
    core: Callable[[np.ndarray, np.ndarray], np.ndarray],
    bits,
    signed,
    name: str,
    paper: str,
    **params,
) -> IntegerMultiplier:
    pair = check_bits(bits)
    sign = check_signed(signed)

    def fn(a, b):
        a, b = np.broadcast_arrays(a, b)
        mag = core(np.abs(a), np.abs(b))
        return np.where((a < 0) != (b < 0), -mag, mag)

    extra = "".join(f"_{k[0]}{v}" for k, v in params.items())
    full_name = f"{name}{_width(pair)}{_tag(sign)}{extra}"
    if max(pair) > MAX_TABLE_BITS:
        return _wide(fn, pair, sign, name, full_name, paper, params)
    return IntegerMultiplier(
        tabulate(fn, pair, sign),
        bits=pair,
        signed=sign,
        name=full_name,
        metadata={"source": "catalog", "design": name, "paper": paper, **params},
    )


def _width(pair: tuple[int, int]) -> str:
    return f"{pair[0]}" if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _tag(sign: tuple[bool, bool]) -> str:
    return "s" if sign[0] or sign[1] else "u"


def exact(bits=8, signed=True) -> IntegerMultiplier:
    """The exact multiplier ``a * b``: the baseline of every comparison
    (above 12 bits, as every design, a function model compiled with the
    system C compiler)."""
    return _make(lambda a, b: a * b, bits, signed, "exact", "exact product")


def _check_count(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}]; got {value}")
    return int(value)


def _array_core(a_bits: int, b_bits: int, hbl: int, vbl: int):
    """The array multiplier keeping partial-product bits a_i b_j with
    j >= hbl and i + j >= vbl, summed exactly."""

    def core(a, b):
        out = np.zeros(np.broadcast(a, b).shape, np.int64)
        for j in range(hbl, b_bits):
            bj = (b >> j) & 1
            for i in range(max(0, vbl - j), a_bits):
                out += (((a >> i) & 1) & bj) << (i + j)
        return out

    return core


def broken_array(bits=8, hbl: int = 0, vbl: int = 4, signed=False) -> IntegerMultiplier:
    """The broken-array multiplier (BAM; Mahdiani, Ahmadi, Fakhraie, Lucas,
    IEEE TCAS-I 57(4), 2010): the array multiplier without the partial-product
    bits ``a_i b_j`` of the rows below the horizontal break line (``j < hbl``)
    and of the columns right of the vertical break line (``i + j < vbl``);
    the kept bits are summed exactly. ``hbl = 0`` is :func:`truncated`.
    """
    a_bits, b_bits = check_bits(bits)
    hbl = _check_count("hbl", hbl, 0, b_bits)
    vbl = _check_count("vbl", vbl, 0, a_bits + b_bits)
    core = _array_core(a_bits, b_bits, hbl, vbl)
    return _make(core, bits, signed, "bam", "Mahdiani et al., IEEE TCAS-I 2010", hbl=hbl, vbl=vbl)


def truncated(bits=8, k: int = 4, signed=False) -> IntegerMultiplier:
    """The truncated array multiplier: the partial-product bits of the ``k``
    least significant columns (``i + j < k``) are not generated (Schulte and
    Swartzlander, VLSI Signal Processing 1993, without their correction
    constant); ``broken_array(bits, hbl=0, vbl=k)``."""
    a_bits, b_bits = check_bits(bits)
    k = _check_count("k", k, 0, a_bits + b_bits)
    core = _array_core(a_bits, b_bits, 0, k)
    return _make(core, bits, signed, "truncated", "Schulte and Swartzlander 1993", k=k)


def drum(bits=8, k: int = 4, signed=True) -> IntegerMultiplier:
    """DRUM, the dynamic-range unbiased multiplier (Hashemi, Bahar, Reda,
    ICCAD 2015): each magnitude keeps ``k`` bits from its leading one, the
    lowest kept bit forced to 1 when bits were dropped (unbiasing), and the
    two are multiplied exactly. Magnitudes below ``2**k`` are exact."""
    k = _check_count("k", k, 2, max(check_bits(bits)))

    def reduce(x):
        t = _leading_one(x)
        drop = np.maximum(t - (k - 1), 0)
        cut = ((x >> drop) << drop) | np.where(drop > 0, np.int64(1) << drop, 0)
        return np.where(drop > 0, cut, x)

    return _make(
        lambda a, b: reduce(a) * reduce(b), bits, signed, "drum", "Hashemi et al. 2015", k=k
    )


def mitchell(bits=8, signed=True) -> IntegerMultiplier:
    """Mitchell's logarithmic multiplier (Mitchell, IRE Trans. Electronic
    Computers, 1962): with ``a = 2**ta (1 + xa)``, ``b = 2**tb (1 + xb)``,
    the product is ``2**(ta+tb) (1 + xa + xb)`` if ``xa + xb < 1``, else
    ``2**(ta+tb+1) (xa + xb)``; in integers, with ``ra = a - 2**ta``, these
    are ``2**(ta+tb) + ra 2**tb + rb 2**ta`` and twice ``ra 2**tb + rb 2**ta``
    (exact: no bit is lost). Zero operands give 0; never above the exact
    product."""

    def core(a, b):
        ta, tb = _leading_one(a), _leading_one(b)
        ra, rb = a - (np.int64(1) << ta), b - (np.int64(1) << tb)
        frac = (ra << tb) + (rb << ta)  # (xa + xb) 2**(ta+tb)
        base = np.int64(1) << (ta + tb)
        out = np.where(frac < base, base + frac, 2 * frac)
        return np.where((a == 0) | (b == 0), 0, out)

    return _make(core, bits, signed, "mitchell", "Mitchell 1962")


def kulkarni(bits=8, signed=False) -> IntegerMultiplier:
    """The underdesigned multiplier of Kulkarni, Gupta and Ercegovac (VLSI
    Design 2011): 2 x 2-bit blocks that give ``3 * 3 = 7`` (three output
    bits) and every other product exactly, composed into wider multipliers
    by exact addition of the shifted block products (an odd width gets a
    zero top bit)."""
    a_bits, b_bits = check_bits(bits)

    def core(a, b):
        out = np.zeros(np.broadcast(a, b).shape, np.int64)
        for i in range((a_bits + 1) // 2):
            da = (a >> (2 * i)) & 3
            for j in range((b_bits + 1) // 2):
                db = (b >> (2 * j)) & 3
                block = np.where((da == 3) & (db == 3), 7, da * db)
                out += block << (2 * (i + j))
        return out

    return _make(core, bits, signed, "kulkarni", "Kulkarni et al., VLSI Design 2011")


CATALOG = {
    "exact": exact,
    "truncated": truncated,
    "bam": broken_array,
    "drum": drum,
    "mitchell": mitchell,
    "kulkarni": kulkarni,
}

# The parameters of a name's "_<letter><value>" parts, by design.
_PARAMS = {"truncated": {"k": "k"}, "bam": {"h": "hbl", "v": "vbl"}, "drum": {"k": "k"}}
_NAME = re.compile(
    r"(?P<design>[a-z]+)(?P<a>\d+)(?:x(?P<b>\d+))?(?P<sign>[su])(?P<rest>(?:_[a-z]\d+)*)"
)


def is_name(name: str) -> bool:
    """Whether ``name`` reads as an integer catalog name (a known design with
    widths and sign: ``mitchell8s``), whatever its parameters."""
    match = _NAME.fullmatch(name.strip()) if isinstance(name, str) else None
    return match is not None and match["design"] in CATALOG


def get(name: str) -> IntegerMultiplier:
    """A catalog multiplier by its name, as the catalog names them:
    ``"mitchell8s"`` (signed 8-bit), ``"drum8u_k4"``, ``"truncated8u_k4"``,
    ``"bam8s_h2_v6"``, ``"kulkarni8x4u"`` (8 x 4 bits), ``"exact12u"``.

    Raises:
      ValueError: a malformed name, an unknown design (the message lists
        them) or parameter.
    """
    if not isinstance(name, str):
        raise TypeError(f"integer multiplier name must be a string; got {name!r}")
    match = _NAME.fullmatch(name.strip())
    if match is None:
        raise ValueError(
            f"integer multiplier name {name!r} must read <design><bits>[x<bits>]<s|u>[_<p><n>...], "
            "e.g. mitchell8s, drum8u_k4, bam8s_h2_v6, kulkarni8x4u"
        )
    design = match["design"]
    if design not in CATALOG:
        raise ValueError(f"unknown integer design {design!r} in {name!r}; known: {sorted(CATALOG)}")
    a = int(match["a"])
    bits = (a, int(match["b"])) if match["b"] else a
    kwargs = {}
    for part in filter(None, match["rest"].split("_")):
        key = _PARAMS.get(design, {}).get(part[0])
        if key is None:
            raise ValueError(
                f"{name!r}: {design} has no parameter {part[0]!r} "
                f"(it has {sorted(_PARAMS.get(design, {})) or 'none'})"
            )
        kwargs[key] = int(part[1:])
    return CATALOG[design](bits, signed=match["sign"] == "s", **kwargs)
