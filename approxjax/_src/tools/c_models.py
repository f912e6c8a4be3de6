"""Your own float multiplier as a lookup table: from a Python function or a C/C++ model.

Neither needs approxjax to be rebuilt: a Python function is evaluated over every
pair of significands; a C or C++ functional model ``float f(float, float)`` is
compiled with the system compiler and run in a child process
(:mod:`approxjax._src.tools.c_build`), tabulated over every mantissa pair with
the exponents fixed, and checked against the table on other exponents and signs.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from approxjax._src.arithmetic import reference
from approxjax._src.arithmetic.multipliers import Multiplier, check_mantissa_bits, significands
from approxjax._src.tools import c_build


def _check_table(table: np.ndarray, m: int, what: str) -> np.ndarray:
    side = 1 << m
    if table.shape != (side, side):
        raise ValueError(
            f"{what} must return one product per pair: shape ({side}, {side}); got {table.shape}"
        )
    bad = ~np.isfinite(table) | (table < 0)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        sig = significands(m)
        raise ValueError(
            f"{what} gave {float(table[i, j])!r} for positive operands {float(sig[i])!r} x "
            f"{float(sig[j])!r} "
            f"(i={i}, j={j}); products must be finite and >= 0"
        )
    return table.astype(np.float32)


def from_function(
    fn: Callable[[np.ndarray, np.ndarray], Any], m: int, name: str | None = None
) -> Multiplier:
    """A multiplier from a vectorised function of two significand arrays.

    ``fn(x, y)`` receives float32 arrays of shape ``(2**m, 2**m)`` holding the
    significands ``1 + i/2**m`` and ``1 + j/2**m`` (in [1, 2)) and returns their
    approximate products (NumPy or JAX arrays, or anything ``np.asarray``
    accepts).

    Example::

      >>> import approxjax as ax
      >>> mult = ax.from_function(lambda x, y: x * y * (1 - 2**-6), 5)

    Raises:
      ValueError: the result has the wrong shape, or an entry is NaN, infinite
        or negative.
    """
    m = check_mantissa_bits(m)
    sig = significands(m).astype(np.float32)
    x, y = np.meshgrid(sig, sig, indexing="ij")
    table = np.asarray(fn(x, y), dtype=np.float64)
    if table.shape == ():
        table = np.broadcast_to(table, x.shape)
    label = name or getattr(fn, "__name__", "function")
    if label == "<lambda>":
        label = "function"
    return Multiplier(_check_table(table, m, f"function {label}"), name=f"{label}{m}")


def from_c(
    source_or_path: str | os.PathLike,
    function: str,
    m: int | None = None,
    *,
    bits: int | tuple[int, int] | None = None,
    signed: bool | tuple[bool, bool] = True,
    name: str | None = None,
    cxx: bool | None = None,
    flags: Sequence[str] = (),
    validate: bool | Literal["warn"] = True,
    samples: int = 4096,
    seed: int = 0,
    timeout: float = 60.0,
    hint: str = "validate='warn' or validate=False",
) -> Multiplier:
    """A multiplier from a C or C++ functional model: a float model
    ``float function(float, float)`` with ``m`` mantissa bits, or an integer
    model (with ``bits=``, see below).

    **Integer models** (``bits=8``, ``bits=(8, 4)``, ``signed=True`` or a
    pair): a function of two integer operands returning their integer
    product, with whatever integer types the file uses (EvoApproxLib's
    ``uint16_t mul8u_XXX(uint8_t A, uint8_t B)``, ``int16_t
    mul8s_XXX(int8_t, int8_t)``, ``uint64_t f(const uint64_t B, const
    uint64_t A)``, ...): it is called with every pair of operand values (two's
    complement values for signed operands; the first parameter is the lhs
    operand, the table's row, whatever its name), compiled with
    ``-DINT_BITS_A=<a> -DINT_BITS_B=<b>``, and tabulated exhaustively in a
    child process into an :class:`~approxjax.IntegerMultiplier` (operands of
    up to 12 bits). Wider operands (13 to 16 bits on either side) make a
    *function model*: the model is tried in a child process on every pair of
    extreme codes and on 65,536 random pairs, then compiled as a shared
    library whose function the CPU kernel calls once per product (slow:
    benchmarks/RESULTS.md; its sums are exact in int64; it neither stacks
    nor gives table gradients; :func:`approxjax.characterize` samples it).
    A function model is trusted on the codes it was not tried on: one that
    crashes there takes the process with it; and the kernel's threads call
    it at once, so it must keep no state between calls (EvoApproxLib's
    models keep none). Hardware figures in the file's header comments
    (EvoApproxLib's ``PDK45_PWR = 0.363 mW``, ``PDK45_AREA = 635.0 um2``,
    ``PDK45_DELAY = 1.37 ns``) become its ``cost`` (``power_mW``,
    ``area_um2``, ``delay_ns``), and the error figures the header reports
    (``MAE``, ``WCE%``, ...) its ``metadata["reported"]``.

    The model is compiled with the system compiler (``CC``/``CXX`` or cc/c++),
    with ``-DAPPROXJAX_M=<m>`` so that it can know the mantissa width, cached
    by the hash of its source and flags (``$APPROXJAX_CACHE_DIR`` or
    ``~/.cache/approxjax/c_models``), and run in a child process. It is
    tabulated over every pair of significands ``1 + i/2**m`` with both
    exponents 0, then validated: on ``samples`` random operands with other
    exponents and signs the model must equal the table's prediction (the
    simulated multiply of :mod:`approxjax.reference`); if it does not, its
    result depends on more than the mantissas and the table cannot represent
    it.

    Args:
      source_or_path: C/C++ source text, or a path to a ``.c``/``.cc``/``.cpp`` file.
      function: the model's function name.
      m: mantissa bits, 0 to 12.
      name: the multiplier's name (default: the function name with m).
      cxx: compile as C++ (default: by file suffix, else C).
      flags: extra compiler flags.
      validate: True raises on a mismatch, "warn" warns, False skips the check.
      samples: operands drawn for the validation.
      seed: seed of the validation sample.
      timeout: seconds the model may run, for the table and for the validation.
      hint: how the caller turns validation off (for the error message).

      bits: integer operand widths (an int, or a pair): makes an integer model.
      signed: whether integer operands are signed (a bool, or a pair).

    Raises:
      ValueError: the source does not compile (with the compiler's message), it
        lacks the function, the model crashes, exits or hangs (naming the
        operands), returns NaN, inf or a negative product for positive
        operands, or (with validate=True) depends on more than the mantissas
        (with the worst case found); an integer model's product outside
        int32, or widths outside 2..16.
      TypeError: neither or both of ``m`` and ``bits``; a function declared to
        return a float type given ``bits`` (or an integer type given ``m``).
    """
    if (m is None) == (bits is None):
        raise TypeError(
            "from_c takes m (mantissa bits of a float model float f(float, float)) or bits= "
            f"(operand widths of an integer model), exactly one; got m={m!r}, bits={bits!r}"
        )
    text, path = c_build.read_source(source_or_path)
    declared = c_build.return_type(text, function)
    if bits is not None:
        if declared is not None and declared in c_build.FLOAT_TYPES:
            raise TypeError(
                f"{function} returns {declared}: an integer model returns an integer product "
                "(for a float model pass m instead of bits=)"
            )
        return _integer_from_c(text, path, function, bits, signed, name, cxx, flags, timeout)
    if declared is not None and declared not in c_build.FLOAT_TYPES:
        raise TypeError(
            f"{function} returns {declared}: a float model returns float "
            "(for an integer model pass bits= instead of m)"
        )
    m = check_mantissa_bits(m)
    kind = c_build.FLOAT_MULTIPLIER
    model, provenance = _build(text, path, function, kind, cxx, flags, [f"-DAPPROXJAX_M={m}"])
    side = 1 << m
    sig = significands(m)
    table = model.table(
        side,
        side,
        timeout=timeout,
        describe=lambda i, j: f"{function}({float(sig[i])!r}, {float(sig[j])!r})",
    )
    table = _check_table(table.astype(np.float64), m, f"C model {function}")
    mult = Multiplier(table, name=name or f"{function}{m}", metadata=provenance)
    if validate:
        report = check_mantissa_only(model, mult, samples=samples, seed=seed, timeout=timeout)
        if report is not None:
            msg = f"C model {function} does not depend on the mantissas alone: {report}"
            if validate == "warn":
                warnings.warn(msg, stacklevel=2)
            else:
                raise ValueError(msg + f" (pass {hint} to accept it)")
    return mult


def _language(path, cxx) -> tuple[bool, object]:
    """Whether to compile as C++ (by the file's suffix unless ``cxx`` says)
    and the folder to add to the include path (the file's)."""
    if cxx is None:
        cxx = path is not None and path.suffix in {".cc", ".cpp", ".cxx"}
    return cxx, (path.resolve().parent if path is not None else None)


def _build(text, path, function, kind, cxx, flags, defines):
    """The model compiled with ``kind``'s driver, ``defines`` and the user's
    ``flags`` (C++ by the file's suffix unless ``cxx`` says), and its
    provenance for the multiplier's metadata."""
    cxx, include = _language(path, cxx)
    model = c_build.build(
        text, function, kind, cxx=cxx, flags=[*defines, *flags], include_dir=include
    )
    provenance = {
        "source": "c_model",
        "function": function,
        "source_hash": model.digest,
        "flags": list(flags),
        "path": str(path) if path else None,
    }
    return model, provenance


def _integer_from_c(text, path, function, bits, signed, name, cxx, flags, timeout):
    from approxjax._src.arithmetic.integer import (
        INT32_MAX,
        MAX_TABLE_BITS,
        IntegerMultiplier,
        check_bits,
        check_signed,
        operand_values,
    )

    pair, sign = check_bits(bits), check_signed(signed)
    widths = [f"-DINT_BITS_A={pair[0]}", f"-DINT_BITS_B={pair[1]}"]
    kind = c_build.integer_kind(*pair, *sign)
    model, provenance = _build(text, path, function, kind, cxx, flags, widths)
    tag = "".join("s" if s else "u" for s in sign)
    cost = header_cost(text)
    metadata = {**provenance, "signedness": tag, "reported": header_metrics(text)}
    if max(pair) > MAX_TABLE_BITS:
        return _function_model(
            model, text, path, function, pair, sign, name, cost, metadata, cxx,
            [*widths, *flags], timeout,
        )  # fmt: skip
    va, vb = operand_values(pair[0], sign[0]), operand_values(pair[1], sign[1])
    table = model.table(
        1 << pair[0],
        1 << pair[1],
        timeout=timeout,
        describe=lambda i, j: f"{function}({int(va[i])}, {int(vb[j])})",
    )
    big = np.abs(table) > INT32_MAX
    if big.any():
        i, j = (int(v) for v in np.argwhere(big)[0])
        raise ValueError(
            f"C model {function}({int(va[i])}, {int(vb[j])}) = {int(table[i, j])} does not fit "
            "int32"
        )
    return IntegerMultiplier(
        table, bits=pair, signed=sign, name=name or function, cost=cost, metadata=metadata
    )


TRIAL_PAIRS = 1 << 16  # random operand pairs a function model is tried on


def _function_model(model, text, path, function, pair, sign, name, cost, metadata, cxx, flags,
                    timeout):  # fmt: skip
    """An integer model of operands wider than 12 bits as a function model
    the kernel calls in process: first run in a child process on every pair
    of the operands' extreme codes (least, -1, 0, 1, greatest) and on
    TRIAL_PAIRS random pairs (a crash, exit or hang there is a CModelError
    naming the operands; products outside int64 cannot occur, as the entry
    returns long long), then loaded as a shared library built with
    ``flags`` (the widths' defines and the user's)."""
    import ctypes

    from approxjax._src.arithmetic.integer import IntegerFunction, IntegerMultiplier, code_range

    def evaluate(a, b):
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        return model.pairs(a, b, timeout=max(timeout, 1e-6 * a.size))

    (lo_a, hi_a), (lo_b, hi_b) = code_range(pair[0], sign[0]), code_range(pair[1], sign[1])

    def corners(lo, hi):
        return np.array(sorted({lo, min(max(-1, lo), hi), 0, min(1, hi), hi}), np.int64)

    ca, cb = np.meshgrid(corners(lo_a, hi_a), corners(lo_b, hi_b), indexing="ij")
    rng = np.random.default_rng(0)
    a = np.concatenate([ca.ravel(), rng.integers(lo_a, hi_a + 1, TRIAL_PAIRS)])
    b = np.concatenate([cb.ravel(), rng.integers(lo_b, hi_b + 1, TRIAL_PAIRS)])
    evaluate(a, b)
    cxx, include = _language(path, cxx)
    lib = c_build.build_library(
        text, function, entry="integer", cxx=cxx, flags=flags, include_dir=include
    )
    library = ctypes.CDLL(str(lib))
    entry = c_build.LIBRARY_ENTRIES["integer"][1]
    address = ctypes.cast(getattr(library, entry), ctypes.c_void_p).value
    fn = IntegerFunction(
        function=function, digest=model.digest, address=int(address), evaluate=evaluate,
        handle=library,
    )  # fmt: skip
    return IntegerMultiplier.function_model(
        fn, bits=pair, signed=sign, name=name or function, cost=cost,
        metadata={**metadata, "runs_as": "function model"},
    )  # fmt: skip


_COST = re.compile(r"\b\w*?_?(PWR|POWER|AREA|DELAY)\s*=\s*([-+0-9.eE]+)\s*([A-Za-z0-9]+)?")
_COST_NAMES = {"PWR": "power", "POWER": "power", "AREA": "area", "DELAY": "delay"}
_METRIC = re.compile(r"^[\s*/#]*(MAE%|MAE|WCE%|WCE|WCRE%|EP%|MRE%|MSE)\s*=\s*([-+0-9.eE]+)", re.M)


def header_cost(text: str) -> dict[str, float]:
    """Hardware figures from a C model's comments: ``PDK45_PWR = 0.363 mW``
    gives ``{"power_mW": 0.363}``; likewise ``_AREA`` (``area_um2``) and
    ``_DELAY`` (``delay_ns``). The first of each kind counts."""
    out: dict[str, float] = {}
    for kind, value, unit in _COST.findall(text):
        key = f"{_COST_NAMES[kind]}_{unit}" if unit else _COST_NAMES[kind]
        if not any(k.startswith(_COST_NAMES[kind]) for k in out):
            try:
                out[key] = float(value)
            except ValueError:
                continue
    return out


def header_metrics(text: str) -> dict[str, float]:
    """The error figures a C model's header reports (``MAE = 1.0``, ``EP% = 37.5``)."""
    out = {}
    for key, value in _METRIC.findall(text):
        try:
            out.setdefault(key, float(value))
        except ValueError:
            continue
    return out


def check_mantissa_only(
    model: c_build.CModel,
    mult: Multiplier,
    *,
    samples: int = 4096,
    seed: int = 0,
    timeout: float = 60.0,
) -> str | None:
    """Compares a compiled model with its table on random exponents and signs.

    Returns None when they agree bit for bit, else a description of the worst case.
    """
    rng = np.random.default_rng(seed)
    m = mult.mantissa_bits
    side = 1 << m
    i = rng.integers(0, side, samples)
    j = rng.integers(0, side, samples)
    ea = rng.integers(-20, 21, samples)
    eb = rng.integers(-20, 21, samples)
    sa = rng.choice([-1.0, 1.0], samples)
    sb = rng.choice([-1.0, 1.0], samples)
    a = (sa * (1 + i / side) * 2.0**ea).astype(np.float32)
    b = (sb * (1 + j / side) * 2.0**eb).astype(np.float32)
    got = model.pairs(a, b, timeout=timeout)
    want = np.asarray(reference.multiply(a, b, mult.lut))
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    if same.all():
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(got.astype(np.float64) - want) / np.abs(want)
    rel = np.where(np.isnan(rel), np.inf, rel)
    k = int(np.argmax(np.where(same, -1, rel)))
    return (
        f"{int((~same).sum())} of {samples} sampled products differ; worst: "
        f"f({float(a[k])!r}, {float(b[k])!r}) = {float(got[k])!r} but the table predicts "
        f"{float(want[k])!r}"
    )


def adder_from_c(
    source_or_path: str | os.PathLike,
    function: str,
    *,
    cxx: bool | None = None,
    flags: Sequence[str] = (),
    samples: int = 4096,
    seed: int = 0,
    timeout: float = 60.0,
):
    """An approximate adder from a C or C++ model ``float function(float acc, float x)``,
    for ``Arithmetic(adder=...)``: every addition of a GEMM's sums (the running
    sum and the next product, in order of k) calls it.

    The model is first compiled as an executable and run in a child process on
    ``samples`` random pairs and on zeros, infinities and NaN (a model that
    crashes, exits or hangs there is a :class:`CModelError` naming the
    operands), then compiled as a shared library (``-fPIC -shared``, cached by
    the hash of its source and flags) whose function the CPU kernel calls in
    process. The CUDA kernels do not run C adders.

    Args:
      source_or_path: C/C++ source text, or a path to a ``.c``/``.cc``/``.cpp`` file.
      function: the adder's function name.
      cxx: compile as C++ (default: by file suffix, else C).
      flags: extra compiler flags.
      samples: random operand pairs of the trial run.
      seed: their seed.
      timeout: seconds the trial run may take.

    Raises:
      CModelError: the source does not compile, lacks the function, or the
        model crashes, exits or hangs on a trial pair.
    """
    import ctypes

    from approxjax._src.arithmetic.arithmetic import c_adder

    text, path = c_build.read_source(source_or_path)
    cxx, include = _language(path, cxx)
    model = c_build.build(
        text, function, c_build.FLOAT_ADDER, cxx=cxx, flags=flags, include_dir=include
    )
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(samples) * 2.0 ** rng.integers(-30, 30, samples)).astype(np.float32)
    b = (rng.standard_normal(samples) * 2.0 ** rng.integers(-30, 30, samples)).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 3.4e38], np.float32)
    sa, sb = np.meshgrid(special, special)
    model.pairs(np.concatenate([a, sa.ravel()]), np.concatenate([b, sb.ravel()]), timeout=timeout)
    lib = c_build.build_library(text, function, cxx=cxx, flags=flags, include_dir=include)
    library = ctypes.CDLL(str(lib))
    return c_adder(library, "approxjax_adder_entry", digest=model.digest, name=function)
