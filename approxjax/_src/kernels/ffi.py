"""Registration of the compiled FFI targets and the calls that use them.

Every custom call of approxjax goes through this module, so the choices that
JAX's FFI leaves open live in one place:

* ``vmap_method="expand_dims"``: under ``vmap`` an unbatched operand gets a
  leading dimension of size 1 and a batched one keeps its batch, so a stack of
  S lookup tables reaches the kernel as one call that broadcasts the operands
  over S instead of copying them S times. The kernels broadcast numpy-style
  over all leading dimensions, so nested ``vmap`` works too.
* attributes are cast to the exact C++ types the handlers bind; the kernel
  options (:class:`~approxjax.KernelOptions`) are one dictionary attribute,
  part of the compiled program.
* each call is a JAX primitive of its own (``approxjax_gemm``,
  ``approxjax_conv_gemm``, ``approxjax_multiply``, ``approxjax_analyze_lut``)
  whose batching rule is the ``expand_dims`` above and whose lowering wraps
  the FFI call in the partitioning rules of
  :mod:`approxjax._src.kernels.partition`, so ``jit`` over sharded operands
  runs it on local shards, and whose type carries the varying manual axes of
  its operands so it works inside ``shard_map``;
* every table travels with its *facts* (``approxjax_analyze_lut``: validity,
  exponent range, separable factors, compact planes and codes), computed
  once when a Multiplier is made, so no GEMM rescans its table;
* the CPU module always registers; the CUDA module registers when it was
  built, and asking for a GPU without it raises an error that says how to
  build it.
"""

from __future__ import annotations

import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import dispatch  # the one private name used: see the lowering below
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from approxjax import _approxjax_cpu
from approxjax._src.kernels import partition as _partition
from approxjax._src.kernels.options import (
    ARITHMETIC_OFF,
    DEFAULT,
    ArithmeticAttribute,
    KernelOptions,
)

try:  # The CUDA extension is optional (CMake option APPROXJAX_CUDA).
    from approxjax import _approxjax_cuda  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _approxjax_cuda = None

GEMM_TARGET = "approxjax_gemm"
CONV_GEMM_TARGET = "approxjax_conv_gemm"
MULTIPLY_TARGET = "approxjax_multiply"
ANALYZE_TARGET = "approxjax_analyze_lut"

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
    """The default instruction-set variant of the CPU kernels on this machine."""
    return _approxjax_cpu.kernel_variant()


def facts_words(m: int) -> int:
    """Words (uint32) of one table's facts for ``m`` mantissa bits."""
    return int(_approxjax_cpu.facts_words(int(m)))


def cuda_available() -> bool:
    """Whether the CUDA extension was built and imported."""
    return _approxjax_cuda is not None


def _check_backend() -> None:
    if jax.default_backend() == "gpu" and _approxjax_cuda is None:
        raise RuntimeError(CUDA_BUILD_HINT)


def _local_result(operand, shape, dtype=jnp.float32):
    """The FFI call's result type: per device, with the operand's varying manual axes."""
    aval = jax.typeof(operand)
    if aval.mat.varying:
        sharding = NamedSharding(aval.sharding.mesh, PartitionSpec())
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding, manual_axis_type=aval.mat)
    return jax.ShapeDtypeStruct(shape, dtype)


def _gemm_shape(shapes, transpose_lhs, transpose_rhs):
    """Result shape of a GEMM on operands of ``shapes`` (lhs, rhs, lut, facts)."""
    lhs, rhs, lut = shapes[:3]
    lead = np.broadcast_shapes(lhs[:-2], rhs[:-2], lut[:-2])
    return (*lead, lhs[-1] if transpose_lhs else lhs[-2], rhs[-2] if transpose_rhs else rhs[-1])


def _conv_gemm_shape(shapes, kernel, strides, dilation, transpose_lhs):
    """Result shape of a conv GEMM on operands of ``shapes`` (x, w or g, lut, facts):
    (lead, N, P, O), or (lead, prod(kernel) * C, O) for ``patches^T @ g``."""
    x, w, lut = shapes[:3]
    n = len(kernel)
    if transpose_lhs:
        lead = np.broadcast_shapes(x[: -(n + 2)], w[:-3], lut[:-2])
        return (*lead, int(np.prod(kernel)) * x[-1], w[-1])
    lead = np.broadcast_shapes(x[: -(n + 2)], w[:-2], lut[:-2])
    return (*lead, x[-(n + 2)], _out_pixels(x[-(n + 1) : -1], kernel, strides, dilation), w[-1])


def _out_pixels(spatial, kernel, strides, dilation) -> int:
    """Output pixels of windows ``kernel`` (``strides``, ``dilation``) over ``spatial``."""
    pixels = 1
    for size, k, st, d in zip(spatial, kernel, strides, dilation, strict=True):
        pixels *= (size - (k - 1) * d - 1) // st + 1
    return pixels


def _multiply_shape(shapes):
    """Result shape of an elementwise multiply on operands of ``shapes`` (a, b, lut, facts)."""
    a, b, lut = shapes[:3]
    return (*np.broadcast_shapes(a[:-1], b[:-1], lut[:-2]), a[-1])


def _analyze_shape(shapes):
    (lut,) = shapes
    return (*lut[:-2], facts_words(int(lut[-1]).bit_length() - 1))


def _raw_gemm(lhs, rhs, lut, facts, noise, *, transpose_lhs, transpose_rhs, options, arithmetic):
    shape = _gemm_shape((lhs.shape, rhs.shape, lut.shape), transpose_lhs, transpose_rhs)
    call = jax.ffi.ffi_call(GEMM_TARGET, _local_result(lhs, shape))
    return call(
        lhs,
        rhs,
        lut,
        facts,
        noise,
        transpose_lhs=bool(transpose_lhs),
        transpose_rhs=bool(transpose_rhs),
        options=options.attribute(),
        arithmetic=arithmetic.attribute(),
    )


def _raw_conv_gemm(
    x, w, lut, facts, noise, *, kernel, strides, dilation, transpose_lhs, options, arithmetic
):
    shape = _conv_gemm_shape(
        (x.shape, w.shape, lut.shape), kernel, strides, dilation, transpose_lhs
    )
    call = jax.ffi.ffi_call(CONV_GEMM_TARGET, _local_result(x, shape))
    as_i64 = partial(np.asarray, dtype=np.int64)
    return call(
        x,
        w,
        lut,
        facts,
        noise,
        kernel=as_i64(kernel),
        strides=as_i64(strides),
        dilation=as_i64(dilation),
        transpose_lhs=bool(transpose_lhs),
        options=options.attribute(),
        arithmetic=arithmetic.attribute(),
    )


def _raw_multiply(a, b, lut, facts):
    shape = _multiply_shape((a.shape, b.shape, lut.shape))
    return jax.ffi.ffi_call(MULTIPLY_TARGET, _local_result(a, shape))(a, b, lut, facts)


def _raw_analyze(lut):
    shape = _analyze_shape((lut.shape,))
    return jax.ffi.ffi_call(ANALYZE_TARGET, _local_result(lut, shape, jnp.uint32))(lut)


gemm_p = Primitive("approxjax_gemm")
conv_gemm_p = Primitive("approxjax_conv_gemm")
multiply_p = Primitive("approxjax_multiply")
analyze_p = Primitive("approxjax_analyze_lut")


_GEMM_RULE = dict(replicated=("l1", "l2", "fw", "nw"), reduced=("k",))
_MULTIPLY_RULE = dict(replicated=("l1", "l2", "fw"), reduced=())
_ANALYZE_CORE = (("l1", "l2"), ("fw",))
_ANALYZE_RULE = dict(replicated=("l1", "l2", "fw"), reduced=())


def _gemm_core(transpose_lhs, transpose_rhs):
    lhs_core = ("k", "m") if transpose_lhs else ("m", "k")
    rhs_core = ("n", "k") if transpose_rhs else ("k", "n")
    return (lhs_core, rhs_core, ("l1", "l2"), ("fw",), ("nw",), ("m", "n"))


_MULTIPLY_CORE = (("e",), ("e",), ("l1", "l2"), ("fw",), ("e",))


def _conv_gemm_core(n, transpose_lhs):
    """Factors of a conv GEMM: only the images ``n`` and the output features
    ``o`` may stay split (a window spans the spatial dimensions, a row of
    ``w`` every input channel). In ``patches^T @ g`` the images are summed
    over: split, they give partial sums and a psum."""
    spatial = tuple(f"s{d}" for d in range(n))
    replicated = ("l1", "l2", "fw", "nw", "c", "k", "p", *spatial)
    if transpose_lhs:
        core = (("n", *spatial, "c"), ("n", "p", "o"), ("l1", "l2"), ("fw",), ("nw",), ("k", "o"))
        return core, dict(replicated=replicated, reduced=("n",))
    core = (("n", *spatial, "c"), ("k", "o"), ("l1", "l2"), ("fw",), ("nw",), ("n", "p", "o"))
    return core, dict(replicated=replicated, reduced=())


def _result_aval(avals, shape, core, rule, dtype=jnp.float32):
    """The result typed like JAX's own ops: varying manual axes, and a sharding
    that follows the partitioning rule where the mesh's axes are explicit."""
    mesh = jax.sharding.get_abstract_mesh()
    spec = PartitionSpec()
    if not mesh.empty and any(t == AxisType.Explicit for t in mesh.axis_types):
        spec = _partition.result_spec(
            [a.shape for a in avals], shape, core, [a.sharding.spec for a in avals], **rule
        )
    return jax.core.ShapedArray(
        shape, dtype, sharding=NamedSharding(mesh, spec), manual_axis_type=avals[0].mat
    )


def _gemm_abstract(
    lhs, rhs, lut, facts, noise, *, transpose_lhs, transpose_rhs, options, arithmetic
):
    shape = _gemm_shape((lhs.shape, rhs.shape, lut.shape), transpose_lhs, transpose_rhs)
    core = _gemm_core(transpose_lhs, transpose_rhs)
    return _result_aval((lhs, rhs, lut, facts, noise), shape, core, _GEMM_RULE)


def _conv_gemm_abstract(
    x, w, lut, facts, noise, *, kernel, strides, dilation, transpose_lhs, options, arithmetic
):
    shape = _conv_gemm_shape(
        (x.shape, w.shape, lut.shape), kernel, strides, dilation, transpose_lhs
    )
    core, rule = _conv_gemm_core(len(kernel), transpose_lhs)
    return _result_aval((x, w, lut, facts, noise), shape, core, rule)


def _multiply_abstract(a, b, lut, facts):
    shape = _multiply_shape((a.shape, b.shape, lut.shape))
    return _result_aval((a, b, lut, facts), shape, _MULTIPLY_CORE, _MULTIPLY_RULE)


def _analyze_abstract(lut):
    shape = _analyze_shape((lut.shape,))
    return _result_aval((lut,), shape, _ANALYZE_CORE, _ANALYZE_RULE, jnp.uint32)


gemm_p.def_abstract_eval(_gemm_abstract)
conv_gemm_p.def_abstract_eval(_conv_gemm_abstract)
multiply_p.def_abstract_eval(_multiply_abstract)
analyze_p.def_abstract_eval(_analyze_abstract)
# Eager calls compile the primitive on its own, as JAX does for its own ops.
_GEMM_STATIC = ("transpose_lhs", "transpose_rhs", "options", "arithmetic")
_CONV_STATIC = ("kernel", "strides", "dilation", "transpose_lhs", "options", "arithmetic")
gemm_p.def_impl(jax.jit(gemm_p.bind, static_argnames=_GEMM_STATIC))
conv_gemm_p.def_impl(jax.jit(conv_gemm_p.bind, static_argnames=_CONV_STATIC))
multiply_p.def_impl(jax.jit(multiply_p.bind))
analyze_p.def_impl(jax.jit(analyze_p.bind))


def _expand_dims_rule(prim):
    """vmap: a mapped operand brings its axis to the front, others get a size-1 axis."""

    def rule(args, dims, **params):
        moved = [
            jnp.expand_dims(x, 0) if d is None else jnp.moveaxis(x, d, 0)
            for x, d in zip(args, dims, strict=True)
        ]
        if prim in (gemm_p, conv_gemm_p):  # noise: two words beside each table
            lut, noise = moved[2], moved[4]
            moved[4] = jnp.broadcast_to(noise, (*lut.shape[:-2], 2))
        return prim.bind(*moved, **params), 0

    return rule


for _prim in (gemm_p, conv_gemm_p, multiply_p, analyze_p):
    batching.primitive_batchers[_prim] = _expand_dims_rule(_prim)


@functools.lru_cache(maxsize=1024)
def _partitioned_gemm(shapes, transpose_lhs, transpose_rhs, options, arithmetic):
    out = _gemm_shape(shapes, transpose_lhs, transpose_rhs)

    def impl(lhs, rhs, lut, facts, noise):
        return _raw_gemm(
            lhs,
            rhs,
            lut,
            facts,
            noise,
            transpose_lhs=transpose_lhs,
            transpose_rhs=transpose_rhs,
            options=options,
            arithmetic=arithmetic,
        )

    core = _gemm_core(transpose_lhs, transpose_rhs)
    return _partition.partitioned(impl, shapes, out, core, **_GEMM_RULE)


@functools.lru_cache(maxsize=1024)
def _partitioned_conv_gemm(shapes, kernel, strides, dilation, transpose_lhs, options, arithmetic):
    core, rule = _conv_gemm_core(len(kernel), transpose_lhs)
    geometry = dict(
        kernel=kernel,
        strides=strides,
        dilation=dilation,
        transpose_lhs=transpose_lhs,
        options=options,
        arithmetic=arithmetic,
    )

    def impl(x, w, lut, facts, noise):
        return _raw_conv_gemm(x, w, lut, facts, noise, **geometry)

    out = _conv_gemm_shape(shapes, kernel, strides, dilation, transpose_lhs)
    return _partition.partitioned(impl, shapes, out, core, **rule)


@functools.lru_cache(maxsize=1024)
def _partitioned_multiply(shapes):
    return _partition.partitioned(
        _raw_multiply, shapes, _multiply_shape(shapes), _MULTIPLY_CORE, **_MULTIPLY_RULE
    )


@functools.lru_cache(maxsize=1024)
def _partitioned_analyze(shapes):
    return _partition.partitioned(
        _raw_analyze, shapes, _analyze_shape(shapes), _ANALYZE_CORE, **_ANALYZE_RULE
    )


def _gemm_lowering(
    lhs, rhs, lut, facts, noise, *, transpose_lhs, transpose_rhs, options, arithmetic
):
    shapes = (lhs.shape, rhs.shape, lut.shape, facts.shape, noise.shape)
    fn = _partitioned_gemm(shapes, transpose_lhs, transpose_rhs, options, arithmetic)
    return fn(lhs, rhs, lut, facts, noise)


def _conv_gemm_lowering(
    x, w, lut, facts, noise, *, kernel, strides, dilation, transpose_lhs, options, arithmetic
):
    shapes = (x.shape, w.shape, lut.shape, facts.shape, noise.shape)
    fn = _partitioned_conv_gemm(
        shapes, kernel, strides, dilation, transpose_lhs, options, arithmetic
    )
    return fn(x, w, lut, facts, noise)


def _multiply_lowering(a, b, lut, facts):
    return _partitioned_multiply((a.shape, b.shape, lut.shape, facts.shape))(a, b, lut, facts)


def _analyze_lowering(lut):
    return _partitioned_analyze((lut.shape,))(lut)


def _analyze_gpu_lowering(lut):
    # The CUDA kernels scan their tables on the device and read no facts.
    return jnp.zeros(_analyze_shape((lut.shape,)), jnp.uint32)


# Like custom_partitioning's own primitive, ours need the device assignment while lowering.
dispatch.prim_requires_devices_during_lowering.update((gemm_p, conv_gemm_p, multiply_p, analyze_p))
mlir.register_lowering(gemm_p, mlir.lower_fun(_gemm_lowering, multiple_results=False))
# CPU only: there is no CUDA kernel for it (approxjax's conv uses it on the CPU).
mlir.register_lowering(
    conv_gemm_p, mlir.lower_fun(_conv_gemm_lowering, multiple_results=False), platform="cpu"
)
mlir.register_lowering(multiply_p, mlir.lower_fun(_multiply_lowering, multiple_results=False))
mlir.register_lowering(
    analyze_p, mlir.lower_fun(_analyze_lowering, multiple_results=False), platform="cpu"
)
mlir.register_lowering(
    analyze_p, mlir.lower_fun(_analyze_gpu_lowering, multiple_results=False), platform="cuda"
)


def same_varying_axes(*xs):
    """Cast operands to the union of their varying manual axes (inside shard_map)."""
    varying = [jax.typeof(x).mat.varying for x in xs]
    union = frozenset().union(*varying)
    return [
        x if v == union else jax.lax.pcast(x, tuple(sorted(union - v)), to="varying")
        for x, v in zip(xs, varying, strict=True)
    ]


def analyze(lut: jax.Array) -> jax.Array:
    """The facts of a table (or a stack of tables): uint32 ``(..., facts_words(m))``.

    Raises (when it runs): an FFI error naming the first entry that is
    negative, -0.0, inf or NaN.
    """
    return analyze_p.bind(lut)


def gemm(
    lhs: jax.Array,
    rhs: jax.Array,
    lut: jax.Array,
    facts: jax.Array,
    noise: jax.Array | None = None,
    *,
    transpose_lhs: bool = False,
    transpose_rhs: bool = False,
    options: KernelOptions = DEFAULT,
    arithmetic: ArithmeticAttribute = ARITHMETIC_OFF,
) -> jax.Array:
    """One approximate batched GEMM: ``out[g] = lhs[g] @ rhs[g]`` under ``lut``.

    Args:
      lhs: float32 ``(G, M, K)``, or ``(G, K, M)`` when ``transpose_lhs``.
      rhs: float32 ``(G, K, N)``, or ``(G, N, K)`` when ``transpose_rhs``.
      lut: float32 ``(1, 2**m, 2**m)`` (a leading 1 so every operand has rank 3).
      facts: its facts, uint32 ``(1, facts_words(m))``.
      noise: uint32 ``(1, 2)``, the seed of stochastic rounding (zeros: none).
      options: the kernel choices.
      arithmetic: product and accumulator formats and the adder.

    Returns:
      float32 ``(G, M, N)``.
    """
    _check_backend()
    noise = _noise_for(lut, noise)
    lhs, rhs, lut, facts, noise = same_varying_axes(lhs, rhs, lut, facts, noise)
    return gemm_p.bind(
        lhs,
        rhs,
        lut,
        facts,
        noise,
        transpose_lhs=bool(transpose_lhs),
        transpose_rhs=bool(transpose_rhs),
        options=options,
        arithmetic=arithmetic,
    )


def _noise_for(lut, noise):
    """The noise operand beside ``lut`` (two words per table)."""
    if noise is None:
        return jnp.zeros((*lut.shape[:-2], 2), jnp.uint32)
    return jnp.broadcast_to(noise.astype(jnp.uint32), (*lut.shape[:-2], 2))


def conv_gemm(
    x: jax.Array,
    w: jax.Array,
    lut: jax.Array,
    facts: jax.Array,
    noise: jax.Array | None = None,
    *,
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
    transpose_lhs: bool = False,
    options: KernelOptions = DEFAULT,
    arithmetic: ArithmeticAttribute = ARITHMETIC_OFF,
) -> jax.Array:
    """Approximate GEMM of a padded input's patches (implicit im2col, CPU only).

    ``out[n, p, o] = sum_k patch(x)[n, p, k] * w[k, o]`` under ``lut``, or with
    ``transpose_lhs`` the weight gradient ``out[k, o] = sum_(n, p) patch(x)[n,
    p, k] * g[n, p, o]`` (``w`` is then ``g``); the patches are read from
    ``x`` in place, never materialised.

    Args:
      x: float32 ``(N, S_1, ..., S_n, C)``, already padded (and lhs-dilated).
      w: float32 ``(prod(kernel) * C, O)``, rows ordered tap-major,
        channel-minor; with ``transpose_lhs``, ``g`` of shape ``(N, P, O)``.
      lut: float32 ``(2**m, 2**m)``; facts: its facts.
      kernel, strides, dilation: ``n`` positive ints each (window, window
        strides, rhs dilation).
      options: the kernel choices.

    Returns:
      float32 ``(N, P, O)``, P the output pixels in row-major order; with
      ``transpose_lhs``, ``(prod(kernel) * C, O)``.
    """
    _check_backend()
    kernel, strides, dilation = (tuple(int(v) for v in t) for t in (kernel, strides, dilation))
    n = len(kernel)
    if n < 1 or len(strides) != n or len(dilation) != n or min(kernel + strides + dilation) < 1:
        raise ValueError(
            "kernel, strides and dilation must be as many positive ints (>= 1); got "
            f"{kernel}, {strides}, {dilation}"
        )
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True)]
    fits = x.ndim == n + 2 and all(s >= span for s, span in zip(x.shape[1:-1], spans, strict=True))
    taps = int(np.prod(kernel))
    if transpose_lhs:
        pixels = _out_pixels(x.shape[1:-1], kernel, strides, dilation) if fits else -1
        ok = fits and w.ndim == 3 and w.shape[:2] == (x.shape[0], pixels)
        want = f"g (N, P, O) = ({x.shape[0]}, {pixels}, O)"
    else:
        ok = fits and w.ndim == 2 and w.shape[0] == taps * x.shape[-1]
        want = f"w (prod(kernel) * C, O) = ({taps} * C, O)"
    if not ok:
        raise ValueError(
            f"conv_gemm needs x (N, *S, C) with every S >= its window {tuple(spans)} and "
            f"{want}; got x {x.shape} and {'g' if transpose_lhs else 'w'} {w.shape}"
        )
    noise = _noise_for(lut, noise)
    x, w, lut, facts, noise = same_varying_axes(x, w, lut, facts, noise)
    return conv_gemm_p.bind(
        x,
        w,
        lut,
        facts,
        noise,
        kernel=kernel,
        strides=strides,
        dilation=dilation,
        transpose_lhs=bool(transpose_lhs),
        options=options,
        arithmetic=arithmetic,
    )


def multiply(a: jax.Array, b: jax.Array, lut: jax.Array, facts: jax.Array) -> jax.Array:
    """Elementwise approximate products of float32 vectors ``a``, ``b`` of shape ``(n,)``.

    ``lut`` has shape ``(2**m, 2**m)``, ``facts`` its facts.
    """
    _check_backend()
    return multiply_p.bind(*same_varying_axes(a, b, lut, facts))


def cpu_plan(
    lhs_shape: tuple[int, ...],
    rhs_shape: tuple[int, ...],
    facts: np.ndarray,
    *,
    transpose_lhs: bool = False,
    transpose_rhs: bool = False,
    options: KernelOptions = DEFAULT,
    threads: int = 2,
    conv: bool = False,
) -> str:
    """The plan the CPU GEMM makes for one call (a pure function, for tests):
    "separable", "compact tables", "tables" or "gathers", then the block
    width, the streamed operand, whether it is packed once ("prepacked", or
    transformed: "prescaled"), planes or codes, row chunk, block split and
    units of work.

    Args:
      lhs_shape, rhs_shape: ``(G, M, K)`` and ``(G, K, N)`` (or transposed,
        with the flags); G counts operand pairs.
      facts: the facts of the call's tables, ``(S, words)`` or ``(words,)``
        (a stack of S tables: S members per operand pair).
      threads: the thread pool's size.
    """
    facts = np.asarray(facts, np.uint32).reshape(-1, np.shape(facts)[-1])
    m = int(facts[0, 2])
    header = facts[:, :8].astype(np.int64)
    flags = header[:, 3]
    signed = header.astype(np.uint32).view(np.int32).astype(np.int64)
    groups, m_rows = lhs_shape[0], lhs_shape[1 if not transpose_lhs else 2]
    depth = lhs_shape[2 if not transpose_lhs else 1]
    n_cols = rhs_shape[2 if not transpose_rhs else 1]
    tables = {
        "range": int(signed[:, 4].min()),
        "separable": bool(np.all(flags & 2)),
        "separable_range": int(signed[:, 5].min()),
        "rounded": bool(np.any(flags & 4)),
        "compact_ok": bool(np.all(flags & 1)) and m <= 7,
        "planes": bool(np.all(flags & 8)),
        "codes": bool(np.any(flags & 16)),
    }
    shape = {
        "m_rows": int(m_rows),
        "n_cols": int(n_cols),
        "depth": int(depth),
        "batch": int(groups) * len(facts),
        "groups": int(groups),
        "most": len(facts),
        "m": m,
        "transpose_lhs": bool(transpose_lhs),
        "transpose_rhs": bool(transpose_rhs),
        "conv": bool(conv),
    }
    attrs = {
        k: (int(v) if isinstance(v, np.integer) else v) for k, v in options.attribute().items()
    }
    return _approxjax_cpu.plan(shape, tables, attrs, int(threads))
