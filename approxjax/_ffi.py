"""Registration of the compiled FFI targets and the two calls that use them.

Every custom call of approxjax goes through this module, so the choices that
JAX's FFI leaves open live in one place:

* ``vmap_method="expand_dims"``: under ``vmap`` an unbatched operand gets a
  leading dimension of size 1 and a batched one keeps its batch, so a stack of
  S lookup tables reaches the kernel as one call that broadcasts the operands
  over S instead of copying them S times. The kernels broadcast numpy-style
  over all leading dimensions, so nested ``vmap`` works too.
* attributes are cast to the exact C++ types the handlers bind.
* the CPU module always registers; the CUDA module registers when it was
  built, and asking for a GPU without it raises an error that says how to
  build it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from approxjax import _approxjax_cpu

try:  # The CUDA extension is optional (CMake option APPROXJAX_CUDA).
    from approxjax import _approxjax_cuda  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _approxjax_cuda = None

GEMM_TARGET = "approxjax_gemm"
MULTIPLY_TARGET = "approxjax_multiply"

for _name, _capsule in _approxjax_cpu.registrations().items():
    jax.ffi.register_ffi_target(_name, _capsule, platform="cpu")
if _approxjax_cuda is not None:  # pragma: no cover - needs a CUDA build
    for _name, _capsule in _approxjax_cuda.registrations().items():
        jax.ffi.register_ffi_target(_name, _capsule, platform="CUDA")

CUDA_BUILD_HINT = (
    "approxjax was built without its CUDA extension, so it cannot run on a GPU. "
    "Rebuild it with the CUDA option on, for example\n"
    "    APPROXJAX_CUDA=ON pip install --no-build-isolation .\n"
    "(or pip install . -Ccmake.define.APPROXJAX_CUDA=ON), or run on the CPU with "
    "JAX_PLATFORMS=cpu."
)


def cpu_kernel_variant() -> str:
    """The instruction-set variant of the CPU kernels chosen on this machine."""
    return _approxjax_cpu.kernel_variant()


def cuda_available() -> bool:
    """Whether the CUDA extension was built and imported."""
    return _approxjax_cuda is not None


def _check_backend() -> None:
    if jax.default_backend() == "gpu" and _approxjax_cuda is None:
        raise RuntimeError(CUDA_BUILD_HINT)


def gemm(
    lhs: jax.Array,
    rhs: jax.Array,
    lut: jax.Array,
    *,
    transpose_lhs: bool = False,
    transpose_rhs: bool = False,
) -> jax.Array:
    """One approximate batched GEMM: ``out[g] = lhs[g] @ rhs[g]`` under ``lut``.

    Args:
      lhs: float32 ``(G, M, K)``, or ``(G, K, M)`` when ``transpose_lhs``.
      rhs: float32 ``(G, K, N)``, or ``(G, N, K)`` when ``transpose_rhs``.
      lut: float32 ``(1, 2**m, 2**m)`` (a leading 1 so every operand has rank 3).

    Returns:
      float32 ``(G, M, N)``.
    """
    _check_backend()
    g = lhs.shape[0]
    m_rows = lhs.shape[2] if transpose_lhs else lhs.shape[1]
    n_cols = rhs.shape[1] if transpose_rhs else rhs.shape[2]
    out = jax.ShapeDtypeStruct((g, m_rows, n_cols), jnp.float32)
    call = jax.ffi.ffi_call(GEMM_TARGET, out, vmap_method="expand_dims")
    return call(lhs, rhs, lut, transpose_lhs=bool(transpose_lhs), transpose_rhs=bool(transpose_rhs))


def multiply(a: jax.Array, b: jax.Array, lut: jax.Array) -> jax.Array:
    """Elementwise approximate products of float32 vectors ``a``, ``b`` of shape ``(n,)``.

    ``lut`` has shape ``(2**m, 2**m)``.
    """
    _check_backend()
    out = jax.ShapeDtypeStruct(a.shape, jnp.float32)
    call = jax.ffi.ffi_call(MULTIPLY_TARGET, out, vmap_method="expand_dims")
    return call(a, b, lut)
