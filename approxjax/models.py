"""Your own multiplier as a lookup table: from a Python function or a C/C++ model.

Neither needs approxjax to be rebuilt: a Python function is evaluated over every
pair of significands; a C or C++ functional model ``float f(float, float)`` is
compiled with the system compiler into a shared library (cached by the hash of
its source and flags), tabulated over every mantissa pair with the exponents
fixed, and checked against the table on other exponents and signs.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from approxjax.multipliers import Multiplier, check_mantissa_bits, significands


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


_WRAPPER = r"""
/* approxjax: tabulation entry points appended to the user's model. */
#ifdef __cplusplus
extern "C" {
#endif
void approxjax_tabulate(int m, float* out) {
  const int side = 1 << m;
  for (int i = 0; i < side; ++i) {
    for (int j = 0; j < side; ++j) {
      float a = 1.0f + (float)i / (float)side;
      float b = 1.0f + (float)j / (float)side;
      out[i * side + j] = (float)(APPROXJAX_FUNCTION(a, b));
    }
  }
}
void approxjax_eval(const float* a, const float* b, float* out, long n) {
  for (long k = 0; k < n; ++k) out[k] = (float)(APPROXJAX_FUNCTION(a[k], b[k]));
}
#ifdef __cplusplus
}
#endif
"""


def _cache_dir() -> Path:
    base = os.environ.get("APPROXJAX_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "approxjax" / "c_models"


def _compiler(cxx: bool) -> str:
    env = os.environ.get("CXX" if cxx else "CC")
    if env:
        return env
    for cand in ("c++", "g++", "clang++") if cxx else ("cc", "gcc", "clang"):
        if shutil.which(cand):
            return cand
    raise RuntimeError(
        "no C/C++ compiler found to build the model; install one (Debian: apt-get install g++) "
        "or set CC/CXX"
    )


def compile_model(
    source: str, function: str, *, cxx: bool = False, flags: Sequence[str] = ()
) -> tuple[ctypes.CDLL, str]:
    """Compiles a functional model into a cached shared library; returns it and its hash.

    Raises:
      ValueError: the function name is not a C identifier, or the source does
        not compile (the message holds the compiler's own output).
    """
    if not re.fullmatch(r"[A-Za-z_]\w*", function):
        raise ValueError(f"function must be a C identifier; got {function!r}")
    compiler = _compiler(cxx)
    argv = [*shlex.split(compiler), "-O2", "-shared", "-fPIC", "-Wl,-z,defs", *flags]
    if not cxx:
        argv.append("-Werror=implicit-function-declaration")
    argv += ["-x", "c++" if cxx else "c"]
    text = f"{source}\n#define APPROXJAX_FUNCTION {function}\n{_WRAPPER}"
    digest = hashlib.sha256("\0".join([text, *argv]).encode()).hexdigest()[:24]
    cache = _cache_dir()
    lib = cache / f"{digest}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = Path(tmp) / ("model.cc" if cxx else "model.c")
            src.write_text(text)
            out = Path(tmp) / "model.so"
            proc = subprocess.run(
                [*argv, str(src), "-o", str(out), "-lm"], capture_output=True, text=True
            )
            if proc.returncode != 0:
                msg = (proc.stderr or proc.stdout).strip()
                missing = r"(undeclared|not declared|implicit|undefined reference)"
                if re.search(rf"\b{re.escape(function)}\b.*{missing}", msg):
                    raise ValueError(
                        f"the model has no function {function!r} (float {function}(float, "
                        f"float)); compiler said:\n{msg}"
                    )
                raise ValueError(f"the C/C++ model does not compile:\n{msg}")
            os.replace(out, lib)  # atomic: never a half-written library
    return ctypes.CDLL(str(lib)), digest


def _evaluate(dll: ctypes.CDLL, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    out = np.empty_like(a)
    ptr = ctypes.POINTER(ctypes.c_float)
    dll.approxjax_eval(
        a.ctypes.data_as(ptr), b.ctypes.data_as(ptr), out.ctypes.data_as(ptr), ctypes.c_long(a.size)
    )
    return out


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
) -> Multiplier:
    """A multiplier from a C or C++ functional model ``float function(float, float)``.

    The model is compiled with the system compiler (``CC``/``CXX`` or cc/c++),
    with ``-DAPPROXJAX_M=<m>`` so that it can know the mantissa width, into a
    shared library cached by the hash of its source and flags
    (``$APPROXJAX_CACHE_DIR`` or ``~/.cache/approxjax/c_models``). It is
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

    Raises:
      ValueError: the source does not compile (with the compiler's message), it
        lacks the function, the model returns NaN, inf or a negative product
        for positive operands, or (with validate=True) it depends on more than
        the mantissas (with the worst case found).
    """
    m = check_mantissa_bits(m)
    text = str(source_or_path)
    path = None
    if "\n" not in text and len(text) < 4096 and Path(text).suffix in {".c", ".cc", ".cpp", ".cxx"}:
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"C model {path} does not exist")
        text = path.read_text()
    if cxx is None:
        cxx = path is not None and path.suffix in {".cc", ".cpp", ".cxx"}
    include = [f"-I{path.resolve().parent}"] if path is not None else []
    dll, digest = compile_model(
        text, function, cxx=cxx, flags=[f"-DAPPROXJAX_M={m}", *include, *flags]
    )
    side = 1 << m
    table = np.empty((side, side), np.float32)
    dll.approxjax_tabulate(ctypes.c_int(m), table.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    table = _check_table(table, m, f"C model {function}")
    mult = Multiplier(
        table,
        name=name or f"{function}{m}",
        metadata={
            "source": "c_model",
            "function": function,
            "source_hash": digest,
            "flags": list(flags),
            "path": str(path) if path else None,
        },
    )
    if validate:
        report = check_mantissa_only(dll, mult, samples=samples, seed=seed)
        if report is not None:
            msg = f"C model {function} does not depend on the mantissas alone: {report}"
            if validate == "warn":
                warnings.warn(msg, stacklevel=2)
            else:
                raise ValueError(msg + " (pass validate='warn' or False to accept it)")
    return mult


def check_mantissa_only(
    dll: ctypes.CDLL, mult: Multiplier, *, samples: int = 4096, seed: int = 0
) -> str | None:
    """Compares a compiled model with its table on random exponents and signs.

    Returns None when they agree bit for bit, else a description of the worst case.
    """
    from approxjax import reference

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
    got = _evaluate(dll, a, b)
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
