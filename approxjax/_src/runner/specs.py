"""Multipliers named on the command line: catalog names, LUT files, C models,
float and integer."""

from __future__ import annotations

import re

from approxjax._src.arithmetic import catalog, integer_catalog
from approxjax._src.arithmetic.integer import IntegerMultiplier, check_bits
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.runner.config import COST_KEYS, INTEGER_OPTIONS

# An integer C model's widths after the colon: s8, u8, s8x4 (lhs x rhs bits).
_C_WIDTHS = re.compile(r"(?P<sign>[su])(?P<a>\d+)(?:x(?P<b>\d+))?")
# --quantize: int8, uint8, int4, ...
_QUANTIZE = re.compile(r"(?P<u>u?)int(?P<bits>\d+)")
# An integer catalog design without widths (mitchell, drum_k4), which
# --quantize completes (mitchell8s, drum8s_k4).
_FAMILY = re.compile(r"(?P<design>[a-z]+)(?P<rest>(?:_[a-z]\d+)*)")


def parse_quantize(value: str) -> tuple[int, bool]:
    """``"int8"`` -> ``(8, True)``, ``"uint4"`` -> ``(4, False)``.

    Raises:
      ValueError: not ``int<bits>``/``uint<bits>`` with bits from 2 to 16.
    """
    match = _QUANTIZE.fullmatch(value.strip())
    bits = int(match["bits"]) if match else 0
    if not 2 <= bits <= 16:
        raise ValueError(
            f"--quantize must be int<bits> or uint<bits> with bits from 2 to 16 (int8, uint4; "
            f"over 12 bits, C function models); got {value!r}"
        )
    return bits, not match["u"]


def load_multiplier(
    spec: str, m: int | None = None, quantize: tuple[int, bool] | None = None
) -> Multiplier | IntegerMultiplier:
    """A multiplier from a spec: a float catalog name (``mitchell7``, or
    ``mitchell`` with ``m``), an integer catalog name (``mitchell8s``,
    ``drum8u_k4``; with ``quantize=(bits, signed)`` also a design without
    widths, ``mitchell`` or ``drum_k4``), an ``.npz`` LUT file, an ApproxTrain
    ``.bin`` file, ``model.c@function:m`` (a float model) or
    ``model.c@function:s8`` (an integer model: ``s``/``u`` and the operand
    widths, ``u8x4`` for 8 x 4 bits).

    Raises:
      ValueError: an unknown name, or a malformed C model spec.
      FileNotFoundError: a LUT file or C model that does not exist.
    """
    from approxjax._src.tools import c_models, lut_files

    spec = spec.strip()
    if spec.endswith(".npz"):
        return lut_files.load_lut(spec)
    if spec.endswith(".bin"):
        return lut_files.load_approxtrain(spec)
    path, at, rest = spec.partition("@")
    if at and path.endswith((".c", ".cc", ".cpp", ".cxx")):
        function, _, bits = rest.partition(":")
        widths = _C_WIDTHS.fullmatch(bits)
        if function and widths:
            a = int(widths["a"])
            pair = check_bits((a, int(widths["b"] or a)))
            return c_models.from_c(path, function, bits=pair, signed=widths["sign"] == "s")
        if not function or not bits.isdigit():
            raise ValueError(
                f"C model spec {spec!r} must be file.c@function:m (a float model, m mantissa "
                "bits) or file.c@function:s8 / u8 / s8x4 (an integer model's sign and widths)"
            )
        return c_models.from_c(path, function, int(bits))
    family = _FAMILY.fullmatch(spec)
    if quantize is not None and family and family["design"] in integer_catalog.CATALOG:
        bits, signed = quantize
        spec = f"{family['design']}{bits}{'s' if signed else 'u'}{family['rest']}"
    if integer_catalog.is_name(spec):
        return integer_catalog.get(spec)
    return catalog.get(spec, m)


# Options after a multiplier spec: BASE+OPTION+OPTION..., each a format name (both
# operands) or KEY=VALUE.
_KEYS = {
    "lhs": "lhs",
    "rhs": "rhs",
    "product": "product",
    "acc": "accumulator",
    "rounding": "operand_rounding",
    "acc_rounding": "accumulator_rounding",
    "product_rounding": "product_rounding",
    "adder": "adder",
}


def load_arithmetic(spec: str, key_seed: int = 0, quantize: tuple[int, bool] | None = None):
    """A multiplier, arithmetic or quantized GEMM from a sweep spec: a multiplier spec (see
    :func:`load_multiplier`, or ``exact`` for IEEE float32 products) followed
    by ``+``-separated options: a format name sets both operands
    (``mitchell7+e4m3``), ``acc=bfloat16`` the accumulator, ``lhs=``, ``rhs=``,
    ``product=`` one format each, ``adder=loa4`` a lower-part-OR adder,
    ``rounding=`` / ``acc_rounding=`` / ``product_rounding=`` a rounding mode
    (stochastic rounding draws its key from ``key_seed``). A spec without
    options is the multiplier itself; ``exact`` without options is None.
    An integer multiplier gives a :class:`~approxjax.Quantized` GEMM, with
    its own options (see :func:`_quantized`).

    Raises:
      ValueError: an unknown option, format or rounding (the message names it).
    """
    import jax

    from approxjax._src.arithmetic.arithmetic import LOA, Arithmetic

    base, *options = [part.strip() for part in spec.strip().split("+")]
    mult = None if base == "exact" else load_multiplier(base, quantize=quantize)
    if isinstance(mult, IntegerMultiplier):
        return _quantized(spec, mult, options, quantize)
    if not options:
        return mult
    fields: dict = {}
    for option in options:
        name, eq, value = option.partition("=")
        if not eq:
            fields["lhs"] = fields["rhs"] = option
            continue
        if name not in _KEYS:
            raise ValueError(
                f"{spec!r}: unknown option {name!r}; expected a format name or one of "
                f"{', '.join(_KEYS)} as KEY=VALUE"
            )
        if name == "adder":
            bits = value.removeprefix("loa")
            if not value.startswith("loa") or not bits.isdigit():
                raise ValueError(f"{spec!r}: adder must be loaK (K low bits ORed); got {value!r}")
            fields["adder"] = LOA(int(bits))
        else:
            fields[_KEYS[name]] = value
    rounds = [v for k, v in fields.items() if k.endswith("rounding")]
    if "stochastic" in rounds:
        fields["key"] = jax.random.key(key_seed)
    try:
        return Arithmetic(multiplier=mult, **fields)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{spec!r}: {e}") from e


def _quantized(spec: str, mult: IntegerMultiplier, options, quantize):
    """The :class:`~approxjax.Quantized` GEMM of an integer spec
    (``mitchell8s+grad=lut+calib=mse``): ``grad=`` the gradient estimator,
    ``calib=`` both operands' calibration (``percentile=`` its percentile;
    ``init=`` where ``calib=learned`` scales start: minmax, percentile, mse),
    ``rank=`` and ``smooth=`` the lut gradient's rank and half-width in
    codes, ``asym`` zero points, ``per_tensor`` one weight scale,
    ``power_mW=`` / ``area_um2=`` / ``delay_ns=`` cost figures (overriding
    the model's). The multiplier must have the widths of
    ``quantize`` when it is given.

    Raises:
      ValueError: an unknown option or value, or widths other than ``quantize``'s.
    """
    from approxjax._src.arithmetic.quantization import Quantized, QuantSpec

    if quantize is not None and (mult.bits, mult.signed) != (
        (quantize[0],) * 2,
        (quantize[1],) * 2,
    ):
        want = f"{'' if quantize[1] else 'u'}int{quantize[0]}"
        raise ValueError(
            f"{spec!r} multiplies {mult.bits[0]}x{mult.bits[1]}-bit codes (signed={mult.signed}) "
            f"but --quantize is {want}"
        )
    quant: dict = {}
    both: dict = {}
    per_channel = True
    cost = dict(mult.cost)
    for option in options:
        key, eq, value = option.partition("=")
        if option == "asym":
            both["symmetric"] = False
        elif option == "per_tensor":
            per_channel = False
        elif eq and key == "grad":
            quant["gradient"] = value
        elif eq and key == "calib":
            both["calibration"] = value
        elif eq and key == "init":
            both["initial"] = value
        elif eq and key in ("rank", "smooth", "percentile", *COST_KEYS):
            try:
                number = int(value) if key in ("rank", "smooth") else float(value)
            except ValueError:
                raise ValueError(f"{spec!r}: {key} must be a number; got {value!r}") from None
            if key in ("rank", "smooth"):
                quant["lut_rank" if key == "rank" else "smoothing"] = number
            elif key == "percentile":
                both["percentile"] = number
            else:
                cost[key] = number
        else:
            raise ValueError(
                f"{spec!r}: unknown option {option!r} for an integer multiplier; expected "
                f"{INTEGER_OPTIONS}"
            )
    try:
        if cost != mult.cost:
            mult = mult.with_cost(cost)
        return Quantized(
            mult,
            lhs=QuantSpec(**both),
            rhs=QuantSpec(per_channel=per_channel, **both),
            **quant,
        )
    except (ValueError, TypeError) as e:
        raise type(e)(f"{spec!r}: {e}") from e


def describe(arith) -> dict:
    """What results.json records of a multiplier or an arithmetic."""
    import dataclasses

    from approxjax._src.arithmetic.arithmetic import as_arithmetic
    from approxjax._src.arithmetic.quantization import Quantized

    if isinstance(arith, Quantized):
        m = arith.multiplier
        return {
            "multiplier": m.name,
            "bits": list(m.bits),
            "signed": list(m.signed),
            "gradient": arith.gradient,
            "lhs_quantization": dataclasses.asdict(arith.lhs),
            "rhs_quantization": dataclasses.asdict(arith.rhs),
            "cost": dict(m.cost),
            "runs_as": "integer lut" if m.function is None else "integer function model",
        }
    a = as_arithmetic(arith)
    if a is None:
        return {"multiplier": None}
    s = a.spec
    return {
        "multiplier": None if a.multiplier is None else a.multiplier.name,
        "lhs": (s.lhs.name if s.lhs else "float32"),
        "rhs": (s.rhs.name if s.rhs else "float32"),
        "operand_rounding": s.operand_rounding,
        "product": s.product.name if s.product else None,
        "product_rounding": s.product_rounding if s.product else None,
        "accumulator": s.accumulator.name if s.accumulator else "float32",
        "accumulator_rounding": s.accumulator_rounding,
        "adder": None if s.adder is None else s.adder.name,
        **_native(a),
    }


def _native(a) -> dict:
    """How its GEMMs run on this process's default backend (the runner applies
    one arithmetic to every approximate layer), the factors' rank, and a
    surrogate's residual (None for a table of its own)."""
    import jax

    from approxjax._src.ops.native import choose

    mult = a.multiplier
    try:
        cpu, other = choose(a.spec.method, a.spec, mult)
    except ValueError as e:
        return {"method": a.spec.method, "runs_as": f"error: {e}"}
    native = cpu if jax.default_backend() == "cpu" else other
    return {
        "method": a.spec.method,
        "runs_as": "native" if native else ("lut" if mult is not None else "xla"),
        "rank": None if mult is None else mult.rank,
        "surrogate": None if mult is None else mult.metadata.get("surrogate"),
    }
