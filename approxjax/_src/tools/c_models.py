"""Your own float multiplier as a lookup table: from a Python function or a C/C++ model.

Neither needs approxjax to be rebuilt: a Python function is evaluated over every
pair of significands; a C or C++ functional model ``float f(float, float)`` is
compiled with the system compiler and run in a child process
(:mod:`approxjax._src.tools.c_build`), tabulated over every mantissa pair with
the exponents fixed, and checked against the table on other exponents and signs.
"""

from __future__ import annotations

import os
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
    m: int,
    *,
    name: str | None = None,
    cxx: bool | None = None,
    flags: Sequence[str] = (),
    validate: bool | Literal["warn"] = True,
    samples: int = 4096,
    seed: int = 0,
    timeout: float = 60.0,
    hint: str = "validate='warn' or validate=False",
) -> Multiplier:
    """A multiplier from a C or C++ functional model ``float function(float, float)``.

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

    Raises:
      ValueError: the source does not compile (with the compiler's message), it
        lacks the function, the model crashes, exits or hangs (naming the
        operands), returns NaN, inf or a negative product for positive
        operands, or (with validate=True) depends on more than the mantissas
        (with the worst case found).
    """
    m = check_mantissa_bits(m)
    text, path = c_build.read_source(source_or_path)
    if cxx is None:
        cxx = path is not None and path.suffix in {".cc", ".cpp", ".cxx"}
    model = c_build.build(
        text,
        function,
        c_build.FLOAT_MULTIPLIER,
        cxx=cxx,
        flags=[f"-DAPPROXJAX_M={m}", *flags],
        include_dir=path.resolve().parent if path is not None else None,
    )
    side = 1 << m
    sig = significands(m)
    table = model.table(
        side,
        side,
        timeout=timeout,
        describe=lambda i, j: f"{function}({float(sig[i])!r}, {float(sig[j])!r})",
    )
    table = _check_table(table.astype(np.float64), m, f"C model {function}")
    mult = Multiplier(
        table,
        name=name or f"{function}{m}",
        metadata={
            "source": "c_model",
            "function": function,
            "source_hash": model.digest,
            "flags": list(flags),
            "path": str(path) if path else None,
        },
    )
    if validate:
        report = check_mantissa_only(model, mult, samples=samples, seed=seed, timeout=timeout)
        if report is not None:
            msg = f"C model {function} does not depend on the mantissas alone: {report}"
            if validate == "warn":
                warnings.warn(msg, stacklevel=2)
            else:
                raise ValueError(msg + f" (pass {hint} to accept it)")
    return mult


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
    if cxx is None:
        cxx = path is not None and path.suffix in {".cc", ".cpp", ".cxx"}
    include = path.resolve().parent if path is not None else None
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
