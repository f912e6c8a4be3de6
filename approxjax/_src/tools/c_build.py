"""User C/C++ functional models, compiled and run in a child process.

A model (a multiplier ``float f(float, float)``, an integer multiplier such as
EvoApproxLib's ``uint16_t mul8u_XXX(uint8_t, uint8_t)``, an adder) is appended
with a small driver ``main`` and compiled with the system compiler (``CC`` /
``CXX``, or cc / c++) into an executable, cached by the hash of its source and
flags in ``$APPROXJAX_CACHE_DIR`` (default ``~/.cache/approxjax/c_models``)
and verified by its own content hash before every use (a corrupt cached build
is rebuilt). The model never runs inside the Python process: the driver
tabulates it (row by row, flushed) or evaluates given operand pairs, under a
time limit. A model that crashes, aborts, exits or hangs gives a
:class:`CModelError` naming the first input it did not finish, never a dead or
hung Python process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from approxjax._src.atomic import write_atomically


class CModelError(ValueError):
    """A C model did not compile, lacks its function, crashed, exited or hung."""


_DRIVER = r"""
/* approxjax: the driver appended to a functional model (see c_build.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static long long aj_rows = 0, aj_cols = 0;
%(KIND)s
int main(int argc, char** argv) {
  if (argc >= 6 && strcmp(argv[1], "table") == 0) {
    aj_rows = atoll(argv[2]);
    aj_cols = atoll(argv[3]);
    long long first = atoll(argv[4]), last = atoll(argv[5]);
    int each = argc >= 7 && atoi(argv[6]) != 0;
    aj_out_t* row = (aj_out_t*)malloc(sizeof(aj_out_t) * (size_t)aj_cols);
    if (!row) return 3;
    for (long long i = first; i < last; ++i) {
      for (long long j = 0; j < aj_cols; ++j) {
        row[j] = aj_entry(i, j);
        if (each) { fwrite(row + j, sizeof(aj_out_t), 1, stdout); fflush(stdout); }
      }
      if (!each) { fwrite(row, sizeof(aj_out_t), (size_t)aj_cols, stdout); fflush(stdout); }
    }
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "pairs") == 0) {
    int each = argc >= 3 && atoi(argv[2]) != 0;
    aj_in_t ab[2];
    while (fread(ab, sizeof(aj_in_t), 2, stdin) == 2) {
      aj_out_t r = aj_pair(ab[0], ab[1]);
      fwrite(&r, sizeof(aj_out_t), 1, stdout);
      if (each) fflush(stdout);
    }
    fflush(stdout);
    return 0;
  }
  return 2;
}
"""


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """How the driver calls a model: C code defining ``aj_out_t``, ``aj_in_t``,
    ``aj_entry(i, j)`` (table entry of row i, column j) and ``aj_pair(a, b)``,
    the NumPy dtypes of its output and inputs, and the signature it expects
    (for messages)."""

    code: str
    out_dtype: np.dtype
    in_dtype: np.dtype
    signature: str


FLOAT_MULTIPLIER = ModelKind(
    code=r"""
typedef float aj_out_t;
typedef float aj_in_t;
static aj_out_t aj_entry(long long i, long long j) {
  float a = 1.0f + (float)i / (float)aj_rows, b = 1.0f + (float)j / (float)aj_cols;
  return (aj_out_t)(APPROXJAX_FUNCTION(a, b));
}
static aj_out_t aj_pair(aj_in_t a, aj_in_t b) { return (aj_out_t)(APPROXJAX_FUNCTION(a, b)); }
""",
    out_dtype=np.dtype(np.float32),
    in_dtype=np.dtype(np.float32),
    signature="float {f}(float, float)",
)


FLOAT_ADDER = ModelKind(
    code=r"""
typedef float aj_out_t;
typedef float aj_in_t;
static aj_out_t aj_entry(long long i, long long j) { (void)i; (void)j; return 0.0f; }
static aj_out_t aj_pair(aj_in_t a, aj_in_t b) { return (aj_out_t)(APPROXJAX_FUNCTION(a, b)); }
""",
    out_dtype=np.dtype(np.float32),
    in_dtype=np.dtype(np.float32),
    signature="float {f}(float acc, float x)",
)


def integer_kind(bits_a: int, bits_b: int, signed_a: bool, signed_b: bool) -> ModelKind:
    """The driver of an integer multiplier on ``bits_a`` x ``bits_b`` operand
    codes: table row i / column j is operand code i / j (two's complement
    where signed), passed as an integer value the compiler converts to the
    model's parameter types."""

    def value(name, bits, signed):
        if not signed:
            return f"static long long {name}(long long c) {{ return c; }}"
        half = 1 << (bits - 1)
        return f"static long long {name}(long long c) {{ return (c ^ {half}LL) - {half}LL; }}"

    code = "\n".join(
        [
            "typedef long long aj_out_t;",
            "typedef long long aj_in_t;",
            value("aj_value_a", bits_a, signed_a),
            value("aj_value_b", bits_b, signed_b),
            "static aj_out_t aj_entry(long long i, long long j) {",
            "  return (aj_out_t)(APPROXJAX_FUNCTION(aj_value_a(i), aj_value_b(j)));",
            "}",
            "static aj_out_t aj_pair(aj_in_t a, aj_in_t b) {",
            "  return (aj_out_t)(APPROXJAX_FUNCTION(a, b));",
            "}",
        ]
    )
    return ModelKind(
        code=code,
        out_dtype=np.dtype(np.int64),
        in_dtype=np.dtype(np.int64),
        signature="an integer function {f}(a, b) of two integer operands",
    )


FLOAT_TYPES = frozenset({"float", "double", "long double", "_Float16", "half"})


def return_type(source: str, function: str) -> str | None:
    """The declared return type of ``function`` in ``source`` (qualifiers and
    ``static``/``inline``/``extern "C"`` dropped), or None where no definition
    is found by this simple scan (the compiler then has the last word)."""
    pattern = re.compile(
        r"(?:^|[;}\n])\s*((?:[A-Za-z_][\w]*\s+|\*\s*)*?)"
        + re.escape(function)
        + r"\s*\([^;{)]*\)\s*\{"
    )
    m = pattern.search(source)
    if m is None:
        return None
    words = [
        w
        for w in m.group(1).replace("*", " * ").split()
        if w not in {"static", "inline", "extern", '"C"', "const", "volatile", "__inline__"}
    ]
    return " ".join(words) or None


def cache_dir() -> Path:
    """Where compiled models are kept (``$APPROXJAX_CACHE_DIR`` or the XDG cache)."""
    base = os.environ.get("APPROXJAX_CACHE_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "approxjax" / "c_models"


def compiler(cxx: bool) -> str:
    """The compiler command: ``CXX``/``CC`` if set, else the first one found.

    Raises:
      CModelError: none is installed (naming CC/CXX).
    """
    var = "CXX" if cxx else "CC"
    env = os.environ.get(var)
    if env:
        if not shutil.which(shlex.split(env)[0]):
            raise CModelError(f"{var}={env!r} names a compiler that is not installed")
        return env
    for cand in ("c++", "g++", "clang++") if cxx else ("cc", "gcc", "clang"):
        if shutil.which(cand):
            return cand
    raise CModelError(
        f"no {'C++' if cxx else 'C'} compiler found to build the model: install one (Debian: "
        f"apt-get install {'g++' if cxx else 'gcc'}) or set {var} to its command"
    )


def read_source(source_or_path: str | os.PathLike) -> tuple[str, Path | None]:
    """The source text, and its path when a file was named."""
    text = str(source_or_path)
    suffixes = {".c", ".cc", ".cpp", ".cxx"}
    if "\n" not in text and len(text) < 4096 and Path(text).suffix in suffixes:
        path = Path(text)
        if path.is_dir():
            raise CModelError(f"C model {path} is a folder, not a source file")
        if not path.is_file():
            raise FileNotFoundError(f"C model {path} does not exist")
        return path.read_text(), path
    return text, None


def _digest_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclasses.dataclass
class CModel:
    """A compiled model executable (see the module docstring)."""

    executable: Path
    function: str
    digest: str  # hash of the source and flags
    kind: ModelKind

    def _run(self, args: Sequence[str], stdin: bytes | None, timeout: float):
        expected = self.executable.with_suffix(".sha256").read_text().strip()
        if _digest_file(self.executable) != expected:
            raise CModelError(f"the cached build {self.executable} changed since it was built")
        try:
            proc = subprocess.run(
                [str(self.executable), *args], input=stdin, capture_output=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as e:
            return None, e.stdout or b""
        return proc.returncode, proc.stdout

    def _describe_exit(self, code: int | None, timeout: float) -> str:
        if code is None:
            return f"did not finish within {timeout:g} s"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"crashed ({name})"
        return f"exited with status {code} before finishing"

    def table(self, rows: int, cols: int, *, timeout: float, describe=None) -> np.ndarray:
        """The model on every (row, column) pair: ``aj_entry(i, j)``, shape (rows, cols).

        Raises:
          CModelError: the model crashed, exited or hung; the message names the
            first entry it did not finish (``describe(i, j)`` says which operands).
        """
        size = self.kind.out_dtype.itemsize
        code, out = self._run(["table", str(rows), str(cols), "0", str(rows)], None, timeout)
        if code == 0 and len(out) == rows * cols * size:
            return np.frombuffer(out, self.kind.out_dtype).reshape(rows, cols).copy()
        done_rows = len(out) // (cols * size)
        what = self._describe_exit(code, timeout)
        # Find the entry within the row: run that row again, flushing each entry.
        code2, out2 = self._run(
            ["table", str(rows), str(cols), str(done_rows), str(done_rows + 1), "1"],
            None,
            min(timeout, 30.0),
        )
        j = min(len(out2) // size, cols - 1)
        where = f"entry [{done_rows}, {j}]"
        if describe is not None:
            where += f" ({describe(done_rows, j)})"
        raise CModelError(f"C model {self.function} {what} at {where}")

    def pairs(self, a: np.ndarray, b: np.ndarray, *, timeout: float) -> np.ndarray:
        """The model on the operand pairs ``(a[k], b[k])``.

        Raises:
          CModelError: the model crashed, exited or hung (naming the first pair
            it did not finish).
        """
        ab = np.stack([np.asarray(a), np.asarray(b)], -1).astype(self.kind.in_dtype)
        size = self.kind.out_dtype.itemsize
        code, out = self._run(["pairs"], ab.tobytes(), timeout)
        if code == 0 and len(out) == len(ab) * size:
            return np.frombuffer(out, self.kind.out_dtype).copy()
        what = self._describe_exit(code, timeout)
        # Find the pair: run again from the first one not written, flushing each.
        done = len(out) // size
        _, out2 = self._run(["pairs", "1"], ab[done:].tobytes(), min(timeout, 30.0))
        k = min(done + len(out2) // size, len(ab) - 1)
        raise CModelError(
            f"C model {self.function} {what} at the operands ({ab[k, 0].item()!r}, "
            f"{ab[k, 1].item()!r})"
        )


def build(
    source: str,
    function: str,
    kind: ModelKind,
    *,
    cxx: bool = False,
    flags: Sequence[str] = (),
    include_dir: Path | None = None,
) -> CModel:
    """Compiles a model with the driver of ``kind`` (cached; see the module docstring).

    Raises:
      CModelError: the function name is not a C identifier, the source does not
        compile (with the compiler's own message), the function is missing, or
        no compiler is installed.
    """
    if not re.fullmatch(r"[A-Za-z_]\w*", function):
        raise CModelError(f"function must be a C identifier; got {function!r}")
    cc = compiler(cxx)
    argv = [*shlex.split(cc), "-O2", *flags]
    if include_dir is not None:
        argv.append(f"-I{include_dir}")
    if not cxx:
        argv.append("-Werror=implicit-function-declaration")
    text = f"{source}\n#define APPROXJAX_FUNCTION {function}\n" + _DRIVER % {"KIND": kind.code}

    def failed(msg: str) -> CModelError:
        missing = r"(undeclared|not declared|implicit|undefined reference)"
        if re.search(rf"\b{re.escape(function)}\b.*{missing}", msg):
            return CModelError(
                f"the model has no function {function!r} "
                f"({kind.signature.format(f=function)}); compiler said:\n{msg}"
            )
        return CModelError(f"the C/C++ model does not compile:\n{msg}")

    exe, digest = _compile_cached(text, argv, cxx, ".model", failed)
    return CModel(exe, function, digest, kind)


# The in-process entry points of build_library: (C type of the operands and
# result, entry name). An adder is called as float(float, float); an integer
# multiplier as long long(long long, long long) with operand values.
LIBRARY_ENTRIES = {
    "adder": ("float", "approxjax_adder_entry"),
    "integer": ("long long", "approxjax_integer_entry"),
}


def build_library(
    source: str,
    function: str,
    *,
    entry: str = "adder",
    cxx: bool = False,
    flags: Sequence[str] = (),
    include_dir: Path | None = None,
) -> Path:
    """Compiles ``source`` as a shared library exporting ``function``
    through the entry point ``LIBRARY_ENTRIES[entry]`` (cached like
    :func:`build`), for a model the kernels call in process (an adder, an
    integer multiplier of wide operands). Build and run it with :func:`build`
    first: that compiles it with the same flags and tries it in a child
    process.

    Raises:
      CModelError: it does not compile.
    """
    ctype, name = LIBRARY_ENTRIES[entry]
    cc = compiler(cxx)
    argv = [*shlex.split(cc), "-O2", "-fPIC", "-shared", *flags]
    if include_dir is not None:
        argv.append(f"-I{include_dir}")
    wrapper = 'extern "C" ' if cxx else ""
    # A visible, unmangled entry point whatever the model's own linkage.
    text = (
        f'{source}\n{wrapper}__attribute__((visibility("default"))) {ctype} '
        f"{name}({ctype} a, {ctype} b) {{ return ({ctype})({function}(a, b)); }}\n"
    )
    lib, _ = _compile_cached(
        text,
        argv,
        cxx,
        ".so",
        lambda msg: CModelError(f"the C/C++ {entry} model does not compile:\n{msg}"),
    )
    return lib


def _compile_cached(text: str, argv: list[str], cxx: bool, suffix: str, failed) -> tuple[Path, str]:
    """Compiles ``text`` with ``argv`` into the cache (``<digest><suffix>``,
    beside its content hash), unless a verified build is there; a corrupt or
    modified cached build is rebuilt. ``failed(message)`` makes the error of
    a failed compilation."""
    lang = "c++" if cxx else "c"
    digest = hashlib.sha256("\0".join([text, *argv, f"-x {lang}"]).encode()).hexdigest()[:24]
    folder = cache_dir()
    out_path = folder / f"{digest}{suffix}"
    stamp = out_path.with_suffix(".sha256")
    if (
        out_path.is_file()
        and stamp.is_file()
        and _digest_file(out_path) == stamp.read_text().strip()
    ):
        return out_path, digest
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = Path(tmp) / ("model.cc" if cxx else "model.c")
        src.write_text(text)
        out = Path(tmp) / "model"
        proc = subprocess.run(
            [*argv, "-x", lang, str(src), "-o", str(out), "-lm"], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise failed((proc.stderr or proc.stdout).strip())
        os.replace(out, out_path)
        write_atomically(stamp, lambda f: f.write(_digest_file(out_path).encode()))
    return out_path, digest
