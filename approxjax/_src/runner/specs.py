"""Multipliers named on the command line: catalog names, LUT files, C models."""

from __future__ import annotations

from approxjax._src.arithmetic import catalog
from approxjax._src.arithmetic.multipliers import Multiplier


def load_multiplier(spec: str, m: int | None = None) -> Multiplier:
    """A multiplier from a spec: a catalog name (``mitchell7``, or ``mitchell``
    with ``m``), an ``.npz`` LUT file, an ApproxTrain ``.bin`` file, or
    ``model.c@function:m``.

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
        if not function or not bits.isdigit():
            raise ValueError(f"C model spec {spec!r} must be file.c@function:m (m an integer)")
        return c_models.from_c(path, function, int(bits))
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


def load_arithmetic(spec: str, key_seed: int = 0):
    """A multiplier or arithmetic from a sweep spec: a multiplier spec (see
    :func:`load_multiplier`, or ``exact`` for IEEE float32 products) followed
    by ``+``-separated options: a format name sets both operands
    (``mitchell7+e4m3``), ``acc=bfloat16`` the accumulator, ``lhs=``, ``rhs=``,
    ``product=`` one format each, ``adder=loa4`` a lower-part-OR adder,
    ``rounding=`` / ``acc_rounding=`` / ``product_rounding=`` a rounding mode
    (stochastic rounding draws its key from ``key_seed``). A spec without
    options is the multiplier itself; ``exact`` without options is None.

    Raises:
      ValueError: an unknown option, format or rounding (the message names it).
    """
    import jax

    from approxjax._src.arithmetic.arithmetic import LOA, Arithmetic

    base, *options = [part.strip() for part in spec.strip().split("+")]
    mult = None if base == "exact" else load_multiplier(base)
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


def describe(arith) -> dict:
    """What results.json records of a multiplier or an arithmetic."""
    from approxjax._src.arithmetic.arithmetic import as_arithmetic

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
