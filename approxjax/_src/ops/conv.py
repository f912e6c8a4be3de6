"""Approximate ``conv_general_dilated``: every product through the multiplier.

The convolution is a GEMM of the input's patches with the kernel. The input
is first padded and dilated with ``lax.pad`` (an operand-sized buffer) and
laid out channels-last, so each patch is a few contiguous runs of channels,
tap by tap.

* On the CPU, without feature or batch groups: implicit im2col. The CPU
  kernel (``approxjax_conv_gemm``) gathers each tile of patches from the
  padded input while it packs the tile (or builds its per-tile table), so no
  patch buffer exists. The forward pass and the weight gradient
  (``patches^T @ g``) run this way; the input gradient is ``g @ w^T``
  followed by the sum back through the slices below, which needs no patches.
* Otherwise (groups, GPUs, an exact weight gradient, or
  ``KernelOptions(conv="patches")``) the patches are built: one ``take`` of
  whole channel rows, or strided slices for few channels (data movement only,
  no arithmetic), then ``patches @ kernel`` runs as an approximate batched
  GEMM whose custom_vjp makes both gradients approximate GEMMs too. Where the
  patches of the whole batch would outgrow the input, they are built and
  multiplied a few images at a time (``lax.map`` with ``jax.checkpoint``), so
  no full im2col buffer is ever held. The gradient with respect to the input
  flows back through the slices as sums (the accumulation that a direct
  convolution's backward pass does as well).

Both ways sum the same products in the same order, so the forward pass and
the input gradient have the same bits either way; the weight gradient too,
unless the built patches were chunked (then the chunks' sums are added,
within float32 rounding of the one sum). Nothing falls back to exact
products.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from approxjax._src.arithmetic.arithmetic import (
    Arithmetic,
    Method,
    check_method,
    convert_operands,
    fold_in_key,
    kernel_attribute,
)
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.arithmetic.quantization import Quantized
from approxjax._src.kernels import ffi
from approxjax._src.kernels.options import KernelOptions, check_options
from approxjax._src.ops import native
from approxjax._src.ops.checks import INTEGER_KINDS, check_multiplier, check_operand
from approxjax._src.ops.dot_general import GradMultiplier
from approxjax._src.ops.gemm import (
    GemmConfig,
    approx_bmm,
    gemm_parts,
    one_table,
    pick,
    zero_cotangents,
)
from approxjax._src.ops.quantized_gemm import quantized_conv


def _pads(padding, lhs_spatial, rhs_spatial, strides, rhs_dilation):
    if isinstance(padding, str):
        effective = [(k - 1) * d + 1 for k, d in zip(rhs_spatial, rhs_dilation, strict=True)]
        return [tuple(p) for p in lax.padtype_to_pads(lhs_spatial, effective, strides, padding)]
    pads = [tuple(int(v) for v in p) for p in padding]
    if len(pads) != len(lhs_spatial) or any(len(p) != 2 for p in pads):
        raise ValueError(
            f"padding must be 'SAME', 'SAME_LOWER', 'VALID' or {len(lhs_spatial)} (low, high) "
            f"pairs; got {padding!r}"
        )
    return pads


def _spatial_tuple(name: str, value, n: int) -> tuple[int, ...]:
    if value is None:
        return (1,) * n
    t = tuple(int(v) for v in value)
    if len(t) != n or any(v < 1 for v in t):
        raise ValueError(f"{name} must be {n} positive integers; got {value!r}")
    return t


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    multiplier: Multiplier | Arithmetic | None = None,
    input_grad_multiplier: GradMultiplier = "forward",
    weight_grad_multiplier: GradMultiplier = "forward",
    options: KernelOptions | None = None,
    method: Method | None = None,
) -> jax.Array:
    """``jax.lax.conv_general_dilated`` with every product through a simulated multiplier.

    Same signature and semantics as :func:`jax.lax.conv_general_dilated` (1-,
    2- and 3-D and more; strides; 'SAME', 'SAME_LOWER', 'VALID' or explicit
    padding; lhs and rhs dilation; dimension numbers; feature and batch
    groups), plus the multipliers of :func:`approxjax.dot_general`.
    ``multiplier=None`` is XLA's exact convolution. ``precision`` has no effect
    on approximate products. ``options`` (:class:`~approxjax.KernelOptions`)
    choose how the kernels compute, including whether the CPU reads the
    patches in place (``conv="implicit"``, the default there) or builds them.
    ``method`` is :func:`approxjax.dot_general`'s: natively, the transformed
    operands go through XLA's own convolution (all three GEMMs of the
    convolution run natively or none does).

    Raises:
      TypeError: operands are not float32/bfloat16/float16.
      ValueError: inconsistent shapes, groups, strides, dilations or padding.
    """
    lhs = check_operand("lhs", lhs)
    rhs = check_operand("rhs", rhs)
    check_multiplier("multiplier", multiplier, allow_forward=False)
    if isinstance(multiplier, INTEGER_KINDS):
        if not (isinstance(input_grad_multiplier, str) and isinstance(weight_grad_multiplier, str)):
            raise ValueError(
                "integer multipliers take no gradient multipliers: approxjax.Quantized(..., "
                "gradient=...) chooses a quantized convolution's"
            )
        if batch_group_count != 1:
            raise ValueError(
                "batch_group_count > 1 (a weight-gradient convolution) is not supported under "
                f"integer multipliers; got {batch_group_count}"
            )
        q = multiplier if isinstance(multiplier, Quantized) else Quantized(multiplier)
        return quantized_conv(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            q,
            options=check_options(options),
            preferred_element_type=preferred_element_type,
        )
    check_multiplier("input_grad_multiplier", input_grad_multiplier, allow_forward=True)
    check_multiplier("weight_grad_multiplier", weight_grad_multiplier, allow_forward=True)
    options = check_options(options)
    method = check_method(method)
    if lhs.ndim != rhs.ndim or lhs.ndim < 2:
        raise ValueError(
            f"lhs and rhs need one rank >= 2; got shapes {tuple(lhs.shape)} and {tuple(rhs.shape)}"
        )
    out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
    conv_args = (
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
    )
    if multiplier is None:
        return lax.conv_general_dilated(lhs, rhs, *conv_args, precision, out_dtype)
    parts = gemm_parts(multiplier, input_grad_multiplier, weight_grad_multiplier, method)

    def natively(lhs, rhs):
        return _conv_natively(conv_args, parts, lhs, rhs).astype(out_dtype)

    def by_tables(lhs, rhs):
        return _conv_by_tables(lhs, rhs, conv_args, out_dtype, options, parts)

    return native.by_platform(*_conv_natives(parts, method), natively, by_tables, lhs, rhs)


def _conv_natives(parts, method) -> tuple[bool, bool]:
    """Whether the convolution runs natively on the CPU, and elsewhere: where
    every GEMM with a multiplier does (one custom_vjp computes all three)."""
    (ig_mode, wg_mode), specs, _, natives = parts
    config = GemmConfig(input_grad=ig_mode, weight_grad=wg_mode, specs=specs, natives=natives)
    used = [pick(config, (0, 1, 2), i) for i in range(3)]
    tabled = [(spec, nat) for spec, _, nat in used if spec is not None and spec.has_multiplier]
    out = tuple(
        any(nat[p] for _, nat in tabled) and all(nat[p] for _, nat in tabled) for p in (0, 1)
    )
    mixed = [any(nat[p] for _, nat in tabled) and not out[p] for p in (0, 1)]
    forced = method == "native" or any(spec.method == "native" for spec, _ in tabled)
    if forced and any(mixed):
        raise ValueError(
            "method='native' for a convolution needs all three of its GEMMs (forward, "
            "input and weight gradient) native or exact; one of them runs by the table"
        )
    return out


def _conv_natively(conv_args, parts, lhs, rhs):
    """The convolution as XLA convolutions of transformed operands, with the
    gradient rules of the LUT path (input gradient: products of g and the
    kernel; weight gradient: products of the input and g), each a sum of
    terms of transposed convolutions (vjp of the bilinear convolution)."""
    (ig_mode, wg_mode), specs, tables, natives = parts
    config = GemmConfig(input_grad=ig_mode, weight_grad=wg_mode, specs=specs, natives=natives)

    def conv(x, w):
        return lax.conv_general_dilated(
            x, w, *conv_args, precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32
        )

    def terms(op, a, b, tables, i):
        spec, leaves, _ = pick(config, tables, i)
        if spec is None:
            return op(a, b)
        lut, facts, key, factors = leaves
        key = fold_in_key(key, i) if spec.stochastic else None
        a, b, _ = convert_operands(a, b, spec, key)
        if not spec.has_multiplier:
            return op(a, b)
        return native.term_sum(op, a, b, factors, spec.mantissa_bits)

    @jax.custom_vjp
    def f(x, w, tables):
        return terms(conv, x, w, tables, 0)

    def fwd(x, w, tables):
        return f(x, w, tables), (x, w, tables)

    def bwd(residuals, g):
        x, w, tables = residuals

        def dx_of(gg, ww):
            return jax.vjp(lambda xx: conv(xx, ww), x)[1](gg)[0]

        def dw_of(xx, gg):
            return jax.vjp(lambda ww: conv(xx, ww), w)[1](gg)[0]

        dx = terms(dx_of, g, w, tables, 1)
        dw = terms(dw_of, x, g, tables, 2)
        return dx, dw, zero_cotangents(tables)

    f.defvjp(fwd, bwd)
    x, w = ffi.same_varying_axes(lhs.astype(jnp.float32), rhs.astype(jnp.float32))
    return f(x, w, tables)


def _conv_by_tables(lhs, rhs, conv_args, out_dtype, options, parts):
    """The convolution as GEMMs of patches by the LUT kernels (see the module docstring)."""
    (
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
    ) = conv_args
    n = lhs.ndim - 2
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    # Channels last: x (N, *S, C), w (*K, I, O); patches then come out as
    # contiguous runs of channels, tap by tap.
    x = jnp.transpose(lhs, (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1]))
    w = jnp.transpose(rhs, (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0]))
    strides = _spatial_tuple("window_strides", window_strides, n)
    lhs_dil = _spatial_tuple("lhs_dilation", lhs_dilation, n)
    rhs_dil = _spatial_tuple("rhs_dilation", rhs_dilation, n)
    fg, bg = int(feature_group_count), int(batch_group_count)
    batch, channels = x.shape[0], x.shape[-1]
    in_feat, out_feat = w.shape[-2:]
    if fg < 1 or bg < 1 or (fg > 1 and bg > 1):
        raise ValueError(
            f"feature_group_count and batch_group_count must be >= 1 and not both > 1; got "
            f"{fg} and {bg}"
        )
    if channels != in_feat * fg:
        raise ValueError(
            f"lhs has {channels} input features, but rhs expects {in_feat} per group x "
            f"feature_group_count {fg} = {in_feat * fg}"
        )
    if out_feat % fg or out_feat % bg or batch % bg:
        raise ValueError(
            f"output features {out_feat} must divide by feature_group_count {fg} and "
            f"batch_group_count {bg}, and the batch {batch} by batch_group_count"
        )
    if isinstance(padding, str) and any(d != 1 for d in lhs_dil):
        raise ValueError(
            f"string padding {padding!r} is not defined with lhs_dilation {lhs_dil} (as in "
            "lax.conv_general_dilated): give explicit (low, high) pairs"
        )
    kernel = w.shape[:n]
    pads = _pads(padding, x.shape[1:-1], kernel, strides, rhs_dil)

    # Pad and dilate the input (an operand-sized buffer).
    x = lax.pad(
        x,
        jnp.zeros((), x.dtype),
        [(0, 0, 0)]
        + [(lo, hi, d - 1) for (lo, hi), d in zip(pads, lhs_dil, strict=True)]
        + [(0, 0, 0)],
    )
    span = [(k - 1) * d + 1 for k, d in zip(kernel, rhs_dil, strict=True)]
    out_spatial = [
        max(0, (size - s) // st + 1)
        for size, s, st in zip(x.shape[1:-1], span, strides, strict=True)
    ]
    if min(out_spatial, default=1) == 0:  # an empty output: nothing to multiply
        y = jnp.zeros((batch // bg, out_feat, *out_spatial), out_dtype)
        return jnp.transpose(y, np.argsort(dn.out_spec))
    kp = int(np.prod(kernel, dtype=np.int64))
    osz = int(np.prod(out_spatial, dtype=np.int64))
    w = w.reshape(kp, in_feat, out_feat)

    taps = list(itertools.product(*(range(k) for k in kernel)))

    def sliced(xc):
        """The same patches from strided slices: its transpose (a sum of padded
        slices) is XLA's fast way back, so it gives the gradient."""
        parts = []
        for offs in taps:
            start = [0] + [o * d for o, d in zip(offs, rhs_dil, strict=True)] + [0]
            limit = (
                [xc.shape[0]]
                + [
                    s0 + (o - 1) * st + 1
                    for s0, o, st in zip(start[1:-1], out_spatial, strides, strict=True)
                ]
                + [channels]
            )
            parts.append(lax.slice(xc, start, limit, [1, *strides, 1]))
        return jnp.concatenate(parts, axis=-1).reshape(xc.shape[0], osz, kp * channels)

    # (n, *Sp, C) -> (n, osz, kp*C), k ordered tap-major, channel-minor. Measured
    # on XLA's CPU backend: from 64 channels (256-byte rows) up, one gather of
    # whole channel rows beats the strided slices; its gradient still goes
    # through the slices' transpose (XLA's scatter-add measured slower).
    patches = sliced
    if channels >= 64:
        grids = np.meshgrid(*(np.arange(o) for o in out_spatial), indexing="ij")
        coords = [
            np.stack([g.reshape(-1) * st + t[d] * dil for t in taps], axis=-1)
            for d, (g, st, dil) in enumerate(zip(grids, strides, rhs_dil, strict=True))
        ]  # per spatial dim: (osz, kp) padded coordinates
        flat = np.ravel_multi_index(coords, x.shape[1:-1]).reshape(-1).astype(np.int32)

        @jax.custom_vjp
        def patches(xc):
            rows = xc.reshape(xc.shape[0], -1, channels)
            return jnp.take(rows, flat, axis=1, mode="clip").reshape(
                xc.shape[0], osz, kp * channels
            )

        patches.defvjp(lambda xc: (patches(xc), xc), lambda xc, g: jax.vjp(sliced, xc)[1](g))

    (ig_mode, wg_mode), specs, luts, _ = parts
    config = GemmConfig(input_grad=ig_mode, weight_grad=wg_mode, specs=specs, options=options)
    x = x.astype(jnp.float32)
    w = w.astype(jnp.float32)

    def bmm(a, b, luts):  # (G, M, K) @ (G, K, N) through the multipliers
        return approx_bmm(config, *ffi.same_varying_axes(a, b), luts)

    if bg == 1:
        og = out_feat // fg
        b = w.reshape(kp, in_feat, fg, og).transpose(2, 0, 1, 3).reshape(fg, kp * in_feat, og)

        def images(xc, b, luts):  # (n, *Sp, C) -> (n, osz, O)
            rows = xc.shape[0] * osz
            a = patches(xc).reshape(rows, kp, fg, in_feat).transpose(2, 0, 1, 3)
            y = bmm(a.reshape(fg, rows, kp * in_feat), b, luts)  # (G, rows, Og)
            return y.transpose(1, 0, 2).reshape(xc.shape[0], osz, out_feat)

        def materialized(x, b, luts):
            fn = partial(images, b=b, luts=luts)
            return _in_chunks(fn, x, osz * kp * channels, lhs.size)

        if fg == 1 and _implicit_im2col(options) and _plain_tables(config):
            geometry = (tuple(kernel), strides, rhs_dil, config)
            y = _implicit_conv(materialized, geometry, *ffi.same_varying_axes(x, b), luts)
        else:
            y = materialized(x, b, luts)
    else:
        nb, ob = batch // bg, out_feat // bg
        a = patches(x).reshape(bg, nb * osz, kp * channels)
        b = w.reshape(kp * channels, bg, ob).transpose(1, 0, 2)
        y = bmm(a, b, luts)  # (B, nb*osz, ob)
        y = y.reshape(bg, nb, osz, ob).transpose(1, 2, 0, 3).reshape(nb, osz, out_feat)
    y = jnp.moveaxis(y.reshape(y.shape[0], *out_spatial, out_feat), -1, 1).astype(out_dtype)
    return jnp.transpose(y, np.argsort(dn.out_spec))


def _plain_tables(config: GemmConfig) -> bool:
    """Whether the forward and weight-gradient GEMMs read tables with no
    operand format (the implicit im2col kernel takes the patches as they
    are: converting them would need the patches)."""
    for i in (0, 2):
        spec = pick(config, (0, 1, 2), i)[0]
        if spec is not None and (spec.lhs is not None or spec.rhs is not None):
            return False
    return True


def _implicit_im2col(options: KernelOptions) -> bool:
    """Whether convolutions read their patches in place (the CPU kernel's
    implicit im2col) rather than building them: on the CPU unless the
    options say ``conv="patches"``."""
    return jax.default_backend() == "cpu" and options.conv != "patches"


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _implicit_conv(materialized, geometry, x, b, luts):
    """``materialized(x, b, luts)`` (a convolution as GEMMs of built patches)
    computed by the CPU kernel that reads the patches from ``x`` in place:
    the same products summed in the same order, so the same bits.

    The input gradient is that of ``materialized`` (``g @ w^T``, chunked as it
    chunks, summed back through the slices); the weight gradient
    ``patches^T @ g`` reads the patches in place too, over the whole batch in
    one sum (unless it is exact: then as ``materialized`` computes it).
    """
    kernel, strides, dilation, config = geometry
    return _conv_gemm(x, b[0], pick(config, luts, 0), config, kernel, strides, dilation, False)


def _conv_gemm(x, w, chosen, config, kernel, strides, dilation, transpose_lhs):
    spec, (lut, facts, key, _), _ = chosen
    role = 2 if transpose_lhs else 0  # the weight gradient's noise, or the forward's (as bmm)
    key = fold_in_key(key, role) if spec.stochastic else None
    _, _, noise = convert_operands(x, w, spec, key)  # no operand format here: the seed
    if lut is None:  # IEEE products: the kernel reads no table
        lut, facts = one_table()
    return ffi.conv_gemm(
        x,
        w,
        lut,
        facts,
        None if noise is None else noise,
        kernel=kernel,
        strides=strides,
        dilation=dilation,
        transpose_lhs=transpose_lhs,
        options=config.options,
        arithmetic=kernel_attribute(spec),
    )


def _implicit_conv_fwd(materialized, geometry, x, b, luts):
    return _implicit_conv(materialized, geometry, x, b, luts), (x, b, luts)


def _implicit_conv_bwd(materialized, geometry, residuals, g):
    x, b, luts = residuals
    kernel, strides, dilation, config = geometry
    lut_cts = zero_cotangents(luts)
    # The forward GEMMs that jax.vjp traces here are unused, and XLA drops them
    # (and so the built patches, where only the input gradient is asked for).
    chosen = pick(config, luts, 2)
    if chosen[0] is None or not chosen[0].has_multiplier:
        _, vjp = jax.vjp(lambda x, b: materialized(x, b, luts), x, b)
        return (*vjp(g), lut_cts)
    _, vjp = jax.vjp(lambda x: materialized(x, b, luts), x)
    (dx,) = vjp(g)
    db = _conv_gemm(x, g, chosen, config, kernel, strides, dilation, True)
    return dx, db[None], lut_cts


_implicit_conv.defvjp(_implicit_conv_fwd, _implicit_conv_bwd)


# Patches of at most this many elements (or of the input's size, if larger)
# are built at a time.
_CHUNK_ELEMENTS = 1 << 20


def _in_chunks(fn, x, per_image: int, input_size: int):
    """``fn`` over the batch of ``x``, a few images at a time when their patches
    would outgrow the input: peak memory stays at buffers of the input's size.

    On one device, chunks hold consecutive images (a reshape, no copy). With
    several, chunk ``j`` holds images ``j, j + B, j + 2B, ...``, so a batch
    split over devices stays split: every chunk keeps a multiple of the device
    count of images (or the batch is not chunked).
    ``jax.checkpoint`` keeps the patches out of the saved residuals: the
    backward pass rebuilds them chunk by chunk.
    """
    batch = x.shape[0]
    budget = max(input_size, _CHUNK_ELEMENTS)
    if batch * per_image <= budget:
        return fn(x)
    need = -(-batch * per_image // budget)
    devices = jax.device_count()
    allowed = [c for c in range(1, batch + 1) if batch % c == 0 and (batch // c) % devices == 0]
    if not allowed or allowed == [1]:
        return fn(x)
    chunks = next((c for c in allowed if c >= need), allowed[-1])
    if devices == 1:  # consecutive images: no copy of the input
        ys = lax.map(jax.checkpoint(fn), x.reshape(chunks, batch // chunks, *x.shape[1:]))
        return ys.reshape(batch, *ys.shape[2:])
    xs = jnp.swapaxes(x.reshape(batch // chunks, chunks, *x.shape[1:]), 0, 1)
    ys = lax.map(jax.checkpoint(fn), xs)  # (chunks, batch // chunks, ...)
    return jnp.swapaxes(ys, 0, 1).reshape(batch, *ys.shape[2:])
