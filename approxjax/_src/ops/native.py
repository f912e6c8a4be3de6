"""The native path: a GEMM or convolution under a low-rank multiplier as a
few XLA dots (or convolutions) of elementwise-transformed operands.

When a multiplier's table is ``L[i, j] == sum_t u_t[i] * v_t[j]``
(:mod:`approxjax._src.arithmetic.lowrank`), the simulated product of two
normal float32 operands ``a = sa 1.fa 2**ea`` and ``b`` is
``sum_t (sa 2**ea u_t[i]) * (sb 2**eb v_t[j])``: a GEMM is r GEMMs of the
transformed operands ``A_t = sa 2**ea u_t[i(a)]`` and ``B_t``, run by XLA's
own dot (Eigen/oneDNN on the CPU, cuBLAS on a GPU) at ``precision=HIGHEST``.
The special cases of the table's rule come out of the same terms: a zero or
subnormal operand transforms to a signed zero; a NaN to NaN in the first
term; an infinity to itself in the first term and 0 in the others, and since
the first pair of factors is positive everywhere, inf times a normal operand
is an infinity of the right sign, inf times a zero (or subnormal) NaN.

What differs from the LUT kernel: the summation order is XLA's (r dots, then
their sum in order t), and the terms' float32 roundings; the bound is
:func:`approxjax.reference.native_bound`. Products outside float32's normal
range are not flushed as the table's rule says: one below ``2**-126`` is
kept (its terms may be subnormal), one of ``2**128`` or more may give inf or
NaN (terms of opposite signs).

Method choice (``method=``): ``"lut"`` the kernel; ``"native"`` this path
(a ``ValueError`` where it cannot run); ``"auto"`` this path where the table
has factors, the arithmetic is plain float32 sums, and it was measured
faster: on a GPU (cuBLAS against our LUT kernel) for every rank; on the CPU
for ranks 2 to :func:`cpu_auto_max_rank` of m (rank 1 runs as fast through
the CPU kernel's own separable path, in the kernel's summation order). The
choice between the CPU and the other platforms is made when XLA lowers the
program for its platform (``lax.platform_dependent``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The largest rank that "auto" runs natively on the CPU, by m (measured at
# 1024^3 in benchmarks/bench_native.py: the LUT kernel costs 3-4x XLA's dot up
# to m = 7, 8x at m = 8, 25x at m = 10; the native path r x dot plus ~0.1x).
_CPU_AUTO = {7: 2, 8: 6}


def cpu_auto_max_rank(m: int) -> int:
    """The largest rank "auto" runs natively on the CPU for tables of m bits."""
    return _CPU_AUTO[7] if m <= 7 else _CPU_AUTO.get(m, 16)


def transform(x: jax.Array, factor: jax.Array, m: int, first: bool) -> jax.Array:
    """One transformed operand ``sign(x) 2**e(x) f[i(x)]`` (see the module
    docstring): zeros and subnormals give signed zeros; NaN stays NaN and
    inf stays inf in the ``first`` term, and both are 0 in the others."""
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    # Sign and exponent alone: +-2**e for a normal number, +-0 for a zero or
    # subnormal, +-inf for inf and NaN.
    scale = lax.bitcast_convert_type(bits & np.uint32(0xFF800000), jnp.float32)
    index = ((bits & np.uint32(0x007FFFFF)) >> (23 - m)).astype(jnp.int32)
    term = scale * jnp.take(factor, index, mode="clip")
    if first:
        return jnp.where(jnp.isnan(x), x, term)
    return jnp.where(jnp.isfinite(x), term, jnp.float32(0))


def term_sum(op, a, b, factors, m: int):
    """``sum_t op(A_t, B_t)`` in order t, for a bilinear ``op`` (an XLA dot or
    convolution) and the operands transformed by the factors ``(u, v)``.
    Unrolled: a ``lax.scan`` over the terms was measured 13x slower in a
    ResNet-8 training step (XLA's CPU convolutions inside a loop)."""
    u, v = factors
    out = None
    for t in range(u.shape[0]):
        term = op(transform(a, u[t], m, t == 0), transform(b, v[t], m, t == 0))
        out = term if out is None else out + term
    return out


def native_bmm(a, b, factors, m: int, transpose_a=False, transpose_b=False):
    """``a @ b`` (batched, as :func:`approxjax._src.ops.gemm.exact_bmm`) under
    a multiplier with factors ``(u, v)``: the sum of r XLA dots, in order t."""
    from approxjax._src.ops.gemm import exact_bmm

    return term_sum(lambda x, y: exact_bmm(x, y, transpose_a, transpose_b), a, b, factors, m)


def why_not_native(spec, multiplier) -> str | None:
    """Why a GEMM under (spec, multiplier) cannot run natively; None if it can."""
    if spec is None or not spec.has_multiplier:
        return None  # exact or IEEE products: XLA's dot already
    if not spec.default_sums:
        return (
            "the native path sums float32 products with XLA's dot: it cannot simulate "
            "product rounding, an accumulator format or an adder (use method='lut')"
        )
    if multiplier.factors is not None:
        return None
    if isinstance(multiplier.lut, jax.core.Tracer) or multiplier.batch_shape:
        return (
            f"{multiplier.name} has no factors (a traced or stacked table is not searched: "
            "make it with Multiplier.factored() before jit/stack)"
        )
    if multiplier.mantissa_bits > 10:
        return (
            f"{multiplier.name} has no factors (tables above m = 8 are searched on request: "
            "Multiplier.factored(max_rank))"
        )
    try:  # the rank found, in the words of Multiplier.factored
        rank = multiplier.factored(16).rank
    except ValueError as e:
        return str(e)
    return (
        f"{multiplier.name} has exact rank {rank} > 4: make it with "
        f"Multiplier.factored(max_rank={rank})"
    )


def choose(method: str, spec, multiplier) -> tuple[bool, bool]:
    """Whether a GEMM runs natively (on the CPU, and elsewhere): static.

    Raises:
      ValueError: ``method="native"`` where the native path cannot run.
    """
    if spec is None or multiplier is None or method == "lut":
        return False, False
    reason = why_not_native(spec, multiplier)
    if method == "native":
        if reason is not None:
            raise ValueError(f"method='native': {reason}")
        return True, True
    if reason is not None:
        return False, False
    rank = multiplier.rank
    return 2 <= rank <= cpu_auto_max_rank(multiplier.mantissa_bits), rank <= 16


def by_platform(cpu_native: bool, other_native: bool, native_fn, lut_fn, *args):
    """``native_fn(*args)`` or ``lut_fn(*args)`` as the platform's choice says."""
    if cpu_native == other_native:
        return (native_fn if cpu_native else lut_fn)(*args)
    cpu = native_fn if cpu_native else lut_fn
    other = native_fn if other_native else lut_fn
    return lax.platform_dependent(*args, cpu=cpu, default=other)
