"""Integer ``dot_general``: every product of two operand codes looked up in an
integer multiplier's table, summed exactly in int32.

The operands are arrays of codes (int8/uint8/int16/uint16, or any integer
type whose values are within the multiplier's code range). They reach the
``approxjax_int_gemm`` kernel as uint16 table indices (the codes' bit
patterns) laid out as batched GEMMs ``(G, M, K)`` and ``(G, K, N)``; a code
outside its operand's range becomes index 65535, which the kernel rejects,
so an out-of-range code under ``jit`` is an error when the program runs (and
one in a concrete array, a ``ValueError`` before anything runs). The kernel
builds per-tile tables from the operand with fewer rows per table row, so
the product is computed as ``out`` or as ``(rhs^T lut^T lhs^T)^T``,
whichever amortises its tables better (the sums are exact, so both give the
same bits).

A function model (operands wider than 12 bits) has no table: its codes
reach ``approxjax_int_function_gemm`` as int32 operand values, and the
kernel calls the compiled model once per product, summing in int64; int32
results are checked to fit (an error when the program runs otherwise),
float32 results are the exact sums rounded once.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from approxjax._src.arithmetic.integer import INT32_MAX, IntegerMultiplier, code_range
from approxjax._src.arithmetic.reference import canonical
from approxjax._src.kernels.options import KernelOptions, check_options
from approxjax._src.ops.checks import check_dimension_numbers

INT_GEMM_TARGET = "approxjax_int_gemm"
INT_FUNCTION_TARGET = "approxjax_int_function_gemm"


def check_codes(name: str, x: Any, mult: IntegerMultiplier, operand: int) -> jax.Array:
    """``x`` as an integer array of codes within the multiplier's range.

    Raises:
      TypeError: ``x`` is not an integer array (floats are quantized first).
      ValueError: a concrete ``x`` holds a code outside the range (naming it).
    """
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        x = jnp.asarray(x)
    dtype = jnp.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.integer) or dtype.itemsize > 4:
        raise TypeError(
            f"{name} must hold integer operand codes (int8, uint8, int16, uint16) for the "
            f"integer multiplier {mult.name}; got {dtype} (quantize float operands first, "
            "or use a float approxjax.Multiplier)"
        )
    lo, hi = mult.code_range(operand)
    if not isinstance(x, jax.core.Tracer):
        host = np.asarray(x).astype(np.int64)
        bad = (host < lo) | (host > hi)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name}{list(where)} = {int(host[where])} is outside the "
                f"{mult.bits[operand]}-bit {'signed' if mult.signed[operand] else 'unsigned'} "
                f"code range [{lo}, {hi}] of {mult.name}"
            )
    return x


def _indices(x: jax.Array, bits: int, lo: int, hi: int) -> jax.Array:
    """Table indices (bit patterns) of codes; 65535 for an out-of-range code."""
    wide = x.astype(jnp.int32)
    ok = (wide >= lo) & (wide <= hi)
    return jnp.where(ok, wide & ((1 << bits) - 1), 0xFFFF).astype(jnp.uint16)


def function_sums(qa, qb, function, bits, signed, dtype=jnp.int32) -> jax.Array:
    """``sum_k f(qa, qb)`` for codes ``qa (G, M, K)`` and ``qb (G, K, N)``
    under a function model ``function`` (an IntegerFunction), exact in
    int64 and returned as ``dtype``: int32 (checked to fit when the program
    runs) or float32 (rounded once)."""
    if jax.default_backend() != "cpu":
        raise NotImplementedError(
            "integer function models (operands over 12 bits) call a compiled C model in the "
            f"CPU kernel; the default backend is {jax.default_backend()!r}: run with "
            "JAX_PLATFORMS=cpu (tables of up to 12 bits run on the GPU too)"
        )
    (lo_a, hi_a), (lo_b, hi_b) = code_range(bits[0], signed[0]), code_range(bits[1], signed[1])
    shape = jnp.broadcast_shapes(qa.shape[:-2], qb.shape[:-2])
    out = jax.ShapeDtypeStruct((*shape, qa.shape[-2], qb.shape[-1]), dtype)
    call = jax.ffi.ffi_call(INT_FUNCTION_TARGET, out, vmap_method="expand_dims")
    return call(
        qa.astype(jnp.int32), qb.astype(jnp.int32), address=np.int64(function.address),
        lo_a=np.int64(lo_a), hi_a=np.int64(hi_a), lo_b=np.int64(lo_b), hi_b=np.int64(hi_b),
    )  # fmt: skip


def _raw_int_gemm(
    a, b, table, *, variant: int, gemm: int, pairs: bool, bytes_: bool, huge_pages: bool
):
    # CPU and CUDA (cuda/integer_kernels.cu) both register this target.
    shape = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2], table.shape[:-2])
    out = jax.ShapeDtypeStruct((*shape, a.shape[-2], b.shape[-1]), jnp.int32)
    call = jax.ffi.ffi_call(INT_GEMM_TARGET, out, vmap_method="expand_dims")
    return call(
        a, b, table, variant=np.int64(variant), gemm=np.int64(gemm), pairs=bool(pairs),
        bytes=bool(bytes_), huge_pages=bool(huge_pages),
    )  # fmt: skip


def int_bmm(
    a: jax.Array, b: jax.Array, table: jax.Array, options: KernelOptions, swap: bool
) -> jax.Array:
    """``out[g] = sum_k table[a[g, :, k], b[g, k, :]]`` for index arrays
    ``(G, M, K)`` and ``(G, K, N)``; with ``swap``, computed as the transpose
    of ``b^T`` against ``a^T`` under ``table^T``."""
    attr = options.attribute()  # the float kernels' codes of gemm and variant
    opts = dict(
        variant=attr["variant"],
        gemm=attr["gemm"],
        pairs=options.pairs,
        bytes_=options.codes,
        huge_pages=options.huge_pages,
    )
    if not swap:
        return _raw_int_gemm(a, b, table[None], **opts)
    bt, at = jnp.swapaxes(b, -1, -2), jnp.swapaxes(a, -1, -2)
    out = _raw_int_gemm(bt, at, jnp.swapaxes(table, -1, -2)[None], **opts)
    return jnp.swapaxes(out, -1, -2)


def code_sums(qa, qb, table, bits, signed, bound: int, options: KernelOptions, name: str):
    """``sum_k table[qa, qb]`` (int32, exact) for codes ``qa (G, M, K)`` and
    ``qb (G, K, N)`` of the given widths and signedness.

    Raises:
      ValueError: the contraction is long enough for the int32 sums of
        entries up to ``bound`` to overflow.
    """
    k = qa.shape[2]
    if k * bound > INT32_MAX:
        raise ValueError(
            f"{k} products of {name} (entries up to {bound}) may overflow the int32 sums; "
            f"contractions of up to {INT32_MAX // max(bound, 1)} are exact"
        )
    lo_a, hi_a = code_range(bits[0], signed[0])
    lo_b, hi_b = code_range(bits[1], signed[1])
    a = _indices(qa, bits[0], lo_a, hi_a)
    b = _indices(qb, bits[1], lo_b, hi_b)
    # Tables are built per k over the columns and shared by the rows: build
    # them from the side whose table rows are fewer per output row.
    swap = a.shape[1] << bits[1] < b.shape[2] << bits[0]
    return int_bmm(a, b, table, options, swap)


def integer_dot_general(
    lhs: Any,
    rhs: Any,
    dimension_numbers,
    mult: IntegerMultiplier,
    *,
    options: KernelOptions | None = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.dot_general`` of operand codes under an integer multiplier (see
    the module docstring); int32 unless ``preferred_element_type`` says
    otherwise.

    Raises:
      TypeError: a float operand.
      ValueError: a code out of range (concrete operands), malformed
        dimension numbers, a stack of multipliers (vmap over it), or a
        contraction long enough for the int32 sums to overflow
        (``K * max|entry| >= 2**31``).
    """
    if mult.batch_shape:
        raise ValueError(
            f"{mult.name} is a stack of {mult.batch_shape} multipliers: map over it with jax.vmap"
        )
    lhs = check_codes("lhs", lhs, mult, 0)
    rhs = check_codes("rhs", rhs, mult, 1)
    options = check_options(options)
    dimension_numbers = check_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    a, b, shape = canonical(lhs, rhs, dimension_numbers)  # (G, M, K), (G, K, N)
    if mult.function is not None:
        wide = preferred_element_type is not None and jnp.issubdtype(
            jnp.dtype(preferred_element_type), jnp.floating
        )
        dtype = jnp.float32 if wide else jnp.int32
        out = function_sums(a, b, mult.function, mult.bits, mult.signed, dtype)
    else:
        out = code_sums(a, b, mult.table, mult.bits, mult.signed, mult.bound, options, mult.name)
    out = out.reshape(shape)
    return out if preferred_element_type is None else out.astype(preferred_element_type)
