"""Quantized GEMMs of float operands under an integer multiplier
(:class:`~approxjax.Quantized`): fake quantization around the integer LUT
GEMM, with the gradient estimators of its docstring.

Operands arrive as batched GEMMs ``a (G, M, K)`` and ``b (G, K, N)``; ``a``
is quantized per tensor, ``b`` per tensor or per output column ``n``.
Every integer GEMM (forward, and the backward ones of ``"quantized"``)
computes ``sum (qa - za)(qb - zb)`` exactly from the table's sum of raw-code
products and the zero-point terms (:func:`int_matmul`).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from approxjax._src.arithmetic.integer import code_range
from approxjax._src.arithmetic.quantization import (
    Quantized,
    QuantSpec,
    calibrate,
    check_quantizable,
    dequantize,
    quantize,
)
from approxjax._src.arithmetic.reference import canonical
from approxjax._src.kernels.options import DEFAULT, KernelOptions
from approxjax._src.ops import gemm as float_gemm
from approxjax._src.ops.integer_gemm import code_sums, function_sums

_PER_TENSOR = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """The static part of a quantized GEMM."""

    bits: tuple[int, int]
    signed: tuple[bool, bool]
    bound: int
    lhs: QuantSpec
    rhs: QuantSpec
    gradient: str
    lut_rank: int
    smoothing: int
    grad_spec: Any  # GemmSpec of the float gradient multiplier, or None
    options: KernelOptions = DEFAULT
    function: Any = None  # the IntegerFunction of a function model (no table)


def int_matmul(qa, za, qb, zb, table, cfg: QuantConfig):
    """``sum_k (qa - za)(qb - zb)`` in int32 for codes ``qa (G, M, K)`` and
    ``qb (G, K, N)``: the table's sum of ``table[qa, qb]`` and exact
    zero-point terms (a function model's exact sums rounded to float32, its
    zero points 0). ``za`` is per tensor; ``zb`` varies along n
    (``(G, 1, N)``), along k (``(G, K, 1)``), or neither."""
    if cfg.function is not None:  # symmetric only (Quantized checks): no zero-point terms
        return function_sums(qa, qb, cfg.function, cfg.bits, cfg.signed, jnp.float32)
    k = qa.shape[2]
    out = code_sums(qa, qb, table, cfg.bits, cfg.signed, cfg.bound, cfg.options, "the multiplier")
    if zb.shape[-2] == 1:  # constant along k
        out = out - jnp.sum(qa, axis=2, keepdims=True) * zb
        zb_sum = k * zb
    else:
        out = out - lax.dot_general(qa, zb, (((2,), (1,)), ((0,), (0,))))
        zb_sum = jnp.sum(zb, axis=1, keepdims=True)
    return out - za * jnp.sum(qb, axis=1, keepdims=True) + za * zb_sum


def _given(scale, zero, shape, bits: int, signed: bool):
    """A given scale and zero point (``Quantized.with_scales``) as arrays of
    ``shape``: the scale's magnitude, at least 1e-12 (a trained scale that
    crosses zero keeps working; :func:`_scale_cotangent` gives its gradient
    the scale's sign), and the zero point rounded and clipped to the code
    range (0 where none is given)."""

    def spread(x, dtype):
        x = jnp.asarray(x, dtype)
        if x.size not in (1, int(np.prod(shape))):
            raise ValueError(
                f"a given per-channel scale or zero point has {x.size} entries for "
                f"{int(np.prod(shape))} output channels"
            )
        return jnp.broadcast_to(x.reshape(-1).reshape(shape) if x.size > 1 else x, shape)

    scale = spread(jnp.maximum(jnp.abs(jnp.asarray(scale, jnp.float32)), 1e-12), jnp.float32)
    if zero is None:
        return scale, jnp.zeros(shape, jnp.int32)
    lo, hi = code_range(bits, signed)
    return scale, spread(jnp.clip(jnp.round(zero), lo, hi), jnp.float32).astype(jnp.int32)


def _quantize_operands(cfg, a, b, scales=(None, None), zeros=(None, None)):
    if scales[0] is None:
        sa, za = calibrate(a, _PER_TENSOR, cfg.bits[0], cfg.signed[0], cfg.lhs)
    else:
        sa, za = _given(scales[0], zeros[0], (1, 1, 1), cfg.bits[0], cfg.signed[0])
    axes_b = (1,) if cfg.rhs.per_channel else _PER_TENSOR
    if scales[1] is None:
        sb, zb = calibrate(b, axes_b, cfg.bits[1], cfg.signed[1], cfg.rhs)
    else:
        per = (b.shape[0], 1, b.shape[2]) if cfg.rhs.per_channel else (1, 1, 1)
        sb, zb = _given(scales[1], zeros[1], per, cfg.bits[1], cfg.signed[1])
    qa = quantize(a, sa, za, cfg.bits[0], cfg.signed[0])
    qb = quantize(b, sb, zb, cfg.bits[1], cfg.signed[1])
    return (qa, sa, za), (qb, sb, zb)


def _inside(x, s, z, bits, signed):
    """1 where x quantizes without clipping (straight-through), else 0."""
    lo, hi = code_range(bits, signed)
    q = jnp.round(x / s) + z
    return ((q >= lo) & (q <= hi)).astype(jnp.float32)


def _forward(cfg, a, b, leaves):
    """The product and the quantized operands (the backward pass's residuals)."""
    (qa, sa, za), (qb, sb, zb) = quantized = _quantize_operands(cfg, a, b, leaves[2], leaves[3])
    c = int_matmul(qa, za, qb, zb, leaves[0], cfg)
    return c.astype(jnp.float32) * (sa * sb), quantized


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def quantized_bmm(cfg: QuantConfig, a, b, leaves):
    return _forward(cfg, a, b, leaves)[0]


def _fwd(cfg, a, b, leaves):
    out, quantized = _forward(cfg, a, b, leaves)
    return out, (a, b, quantized, leaves)


def _bwd(cfg, residuals, g):
    a, b, ((qa, sa, za), (qb, sb, zb)), leaves = residuals
    mask_a = _inside(a, sa, za, cfg.bits[0], cfg.signed[0])
    mask_b = _inside(b, sb, zb, cfg.bits[1], cfg.signed[1])
    if cfg.gradient == "lut":
        da, db = _lut_gradients(cfg, g, qa, sa, za, qb, sb, zb, leaves[0])
    elif cfg.gradient == "quantized":
        da, db = _quantized_gradients(cfg, g, qa, sa, za, qb, sb, zb, leaves[0])
    else:
        xa, xb = dequantize(qa, sa, za), dequantize(qb, sb, zb)
        spec, grad_leaves = (None, None) if cfg.gradient == "ste" else (cfg.grad_spec, leaves[1])
        opts = cfg.options
        da = float_gemm.bmm(g, xb, spec, grad_leaves, transpose_b=True, options=opts, role=1)
        db = float_gemm.bmm(xa, g, spec, grad_leaves, transpose_a=True, options=opts, role=2)
    scales, zeros = leaves[2], leaves[3]
    sides = ((a, sa, za, da, _PER_TENSOR), (b, sb, zb, db, (1,)))
    scale_cts = tuple(
        None if scales[i] is None else _lsq_cotangent(cfg, i, *sides[i], scales[i], "scale")
        for i in (0, 1)
    )
    zero_cts = tuple(
        None if zeros[i] is None else _lsq_cotangent(cfg, i, *sides[i], zeros[i], "zero")
        for i in (0, 1)
    )
    cts = (*float_gemm.zero_cotangents(leaves[:2]), scale_cts, zero_cts)
    return da * mask_a, db * mask_b, cts


def _lsq_cotangent(cfg, side, x, s, z, dx, axes, given, which: str):
    """LSQ/LSQ+ gradient of a given scale or zero point
    (``Quantized.with_scales``): the operand's unmasked gradient ``dx``
    times ``d(s (q - z))/ds`` (``round(x/s) - x/s`` inside the range, ``q -
    z`` at a clipped value) or ``d/dz`` (0 inside, ``-s`` where clipped),
    summed over the values that share the parameter, times ``1 / sqrt(n *
    q_max)``; in the shape of ``given``."""
    lo, hi = code_range(cfg.bits[side], cfg.signed[side])
    v = x / s
    z = z.astype(jnp.float32)
    q = jnp.round(v) + z
    clipped = jnp.clip(q, lo, hi)
    if which == "scale":
        d = jnp.where(clipped == q, jnp.round(v) - v, clipped - z)
    else:
        d = jnp.where(clipped == q, 0.0, -s)
    per = x.size if given.size == 1 else x.size // given.size
    total = jnp.sum(dx * d, axis=_PER_TENSOR if given.size == 1 else axes)
    out = (total / np.sqrt(per * hi)).reshape(given.shape)
    if which == "scale":
        out = out * jnp.where(given < 0, -1.0, 1.0)  # the scale used is |given|
    return out.astype(given.dtype)


quantized_bmm.defvjp(_fwd, _bwd)


def _quantized_gradients(cfg, g, qa, sa, za, qb, sb, zb, table):
    """Both backward GEMMs through the integer multiplier: ``g`` quantized
    (symmetric, per tensor) in the lhs role for ``da = g @ b^T`` and the rhs
    role for ``db = a^T @ g``."""
    sym = QuantSpec(calibration=cfg.lhs.calibration, percentile=cfg.lhs.percentile)
    zero = jnp.zeros((1, 1, 1), jnp.int32)
    # da = sum_n (g sb) (qb - zb): b's scales (per n: inside the sum) go with g.
    gs = g * sb
    s1, _ = calibrate(gs, _PER_TENSOR, cfg.bits[0], True, sym)
    q1 = quantize(gs, s1, 0, cfg.bits[0], True)
    # q1 (G,M,N) @ qb^T (G,N,K): qb's zero points vary along the contraction n.
    qbt, zbt = jnp.swapaxes(qb, 1, 2), jnp.swapaxes(zb, 1, 2)
    da = int_matmul(q1, zero, qbt, zbt, table, cfg).astype(jnp.float32) * s1
    # db = sa sum_m (qa - za) g
    s2, _ = calibrate(g, _PER_TENSOR, cfg.bits[1], True, sym)
    q2 = quantize(g, s2, 0, cfg.bits[1], True)
    db = int_matmul(jnp.swapaxes(qa, 1, 2), za, q2, zero, table, cfg)
    return da, db.astype(jnp.float32) * (sa * s2)


def derivative_factors(table, bits, signed, smoothing: int, rank: int):
    """Low-rank factors of the table's derivatives along each operand:
    ``(P, Q)`` with ``d table / d a [i, j] ~ sum_t P[i, t] Q[j, t]`` and
    ``(P2, Q2)`` for ``d / d b``, indexed by bit patterns. Central
    differences of width ``2 * smoothing`` codes in value order (one-sided
    at the ends), then the best rank-``rank`` approximation (SVD)."""
    va = np.arange(1 << bits[0])
    vb = np.arange(1 << bits[1])
    if signed[0]:
        va = (va ^ (1 << (bits[0] - 1))) - (1 << (bits[0] - 1))
    if signed[1]:
        vb = (vb ^ (1 << (bits[1] - 1))) - (1 << (bits[1] - 1))
    oa, ob = np.argsort(va), np.argsort(vb)  # value order -> bit pattern
    ia, ib = np.argsort(oa), np.argsort(ob)  # bit pattern -> value order
    t = table.astype(jnp.float32)[oa][:, ob]  # rows and columns by value

    def diff(x, axis):
        n = x.shape[axis]
        hi = np.minimum(np.arange(n) + smoothing, n - 1)
        lo = np.maximum(np.arange(n) - smoothing, 0)
        step = jnp.asarray((hi - lo).astype(np.float32))
        d = jnp.take(x, hi, axis=axis) - jnp.take(x, lo, axis=axis)
        return d / (step[:, None] if axis == 0 else step[None, :])

    out = []
    for d in (diff(t, 0), diff(t, 1)):
        u, s, vt = jnp.linalg.svd(d, full_matrices=False)
        r = min(rank, s.shape[0])
        out.append(((u[:, :r] * s[:r])[ia], vt[:r].T[ib]))
    return out


def _lut_gradients(cfg, g, qa, sa, za, qb, sb, zb, table):
    """Gradients through the table's own derivatives (Quantized's docstring):
    ``da[m, k] = sum_n g sb (D_a[qa, qb] - zb)`` and ``db[k, n] = sa sum_m g
    (D_b[qa, qb] - za)``, each low-rank term one float32 GEMM."""
    (p, q), (p2, q2) = derivative_factors(table, cfg.bits, cfg.signed, cfg.smoothing, cfg.lut_rank)
    mask_a, mask_b = (1 << cfg.bits[0]) - 1, (1 << cfg.bits[1]) - 1
    ia, ib = qa & mask_a, qb & mask_b
    gs = g * sb  # (G,M,N), sb per n or per tensor
    hp = lax.Precision.HIGHEST
    da = jnp.zeros(qa.shape, jnp.float32)
    db = jnp.zeros(qb.shape, jnp.float32)
    for t in range(p.shape[1]):
        # da += P_t[qa] * (gs @ Q_t[qb]^T)
        da = da + p[:, t][ia] * jnp.einsum("gmn,gkn->gmk", gs, q[:, t][ib], precision=hp)
        # db += Q2_t[qb] * (P2_t[qa]^T @ g)
        db = db + q2[:, t][ib] * jnp.einsum("gmk,gmn->gkn", p2[:, t][ia], g, precision=hp)
    da = da - jnp.sum(gs * zb, axis=2, keepdims=True)
    db = (db - za * jnp.sum(g, axis=1, keepdims=True)) * sa
    return da, db


def _config(q: Quantized, options) -> tuple[QuantConfig, tuple]:
    """The static config of ``q``'s GEMMs and their leaves (the table, the
    float gradient multiplier's)."""
    mult = q.multiplier
    spec, grad_leaves = (
        float_gemm.split(q.grad_multiplier) if q.gradient == "float" else (None, None)
    )
    cfg = QuantConfig(
        bits=mult.bits,
        signed=mult.signed,
        bound=mult.bound,
        lhs=q.lhs,
        rhs=q.rhs,
        gradient=q.gradient,
        lut_rank=q.lut_rank,
        smoothing=q.smoothing,
        grad_spec=spec,
        options=options or DEFAULT,
        function=mult.function,
    )
    return cfg, (mult.table, grad_leaves, (q.lhs_scale, q.rhs_scale), (q.lhs_zero, q.rhs_zero))


def quantized_dot_general(
    lhs: Any,
    rhs: Any,
    dimension_numbers,
    q: Quantized,
    *,
    options: KernelOptions | None = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.dot_general`` of float operands quantized for an integer
    multiplier (see :class:`~approxjax.Quantized`)."""
    check_quantizable("lhs", lhs)
    check_quantizable("rhs", rhs)
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
    cfg, leaves = _config(q, options)
    a, b, shape = canonical(lhs.astype(jnp.float32), rhs.astype(jnp.float32), dimension_numbers)
    out = quantized_bmm(cfg, a, b, leaves)
    return out.reshape(shape).astype(out_dtype)


@dataclasses.dataclass(frozen=True)
class _Conv:
    """The static arguments of a convolution (``dn``: ConvDimensionNumbers)."""

    window_strides: tuple
    padding: Any
    lhs_dilation: Any
    rhs_dilation: Any
    dn: Any
    groups: int

    def native(self, x, w):
        """XLA's own float32 convolution of ``x`` and ``w``."""
        return lax.conv_general_dilated(
            x, w, self.window_strides, self.padding, self.lhs_dilation, self.rhs_dilation,
            self.dn, feature_group_count=self.groups,
        )  # fmt: skip


def _patch_gemm(conv: _Conv, x, w, gemm):
    """``gemm(a, w_gemm)`` of the input's patches ``a (G, N*P, Cg*win)`` and the
    weight ``(G, Cg*win, Og)`` (``gemm`` returns the product first), back in
    the output's layout; and whatever else ``gemm`` returns."""
    lhs_spec, rhs_spec, out_spec = conv.dn
    window = tuple(w.shape[d] for d in rhs_spec[2:])
    patches = lax.conv_general_dilated_patches(
        x, window, conv.window_strides, conv.padding, lhs_dilation=conv.lhs_dilation,
        rhs_dilation=conv.rhs_dilation, dimension_numbers=conv.dn,
    )  # fmt: skip
    # patches: out's layout, features ordered (input channel, *window)
    to_nsf = (out_spec[0], *out_spec[2:], out_spec[1])
    patches = jnp.transpose(patches, to_nsf)
    lead = patches.shape[:-1]
    groups = conv.groups
    cg = w.shape[rhs_spec[1]]  # input channels per group
    win = int(np.prod(window, dtype=np.int64))
    out_ch = w.shape[rhs_spec[0]]
    a = patches.reshape(-1, groups, cg * win).transpose(1, 0, 2)  # (G, N*P, Cg*win)
    wg = jnp.transpose(w, (rhs_spec[0], rhs_spec[1], *rhs_spec[2:]))
    wg = wg.reshape(groups, out_ch // groups, cg * win).transpose(0, 2, 1)  # (G, Cg*win, Og)
    out, *rest = gemm(a, wg)  # (G, N*P, Og)
    out = out.transpose(1, 0, 2).reshape(*lead, out_ch)
    return (jnp.transpose(out, np.argsort(to_nsf)), *rest)


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _ste_conv(cfg: QuantConfig, conv: _Conv, x, w, leaves):
    return _ste_conv_fwd(cfg, conv, x, w, leaves)[0]


def _ste_conv_fwd(cfg, conv, x, w, leaves):
    out, quantized = _patch_gemm(conv, x, w, lambda a, b: _forward(cfg, a, b, leaves))
    (_, sa, za), (_, sb, zb) = quantized
    return out, (x, w, sa, za, sb, zb, leaves)


def _ste_conv_bwd(cfg, conv, residuals, g):
    """Straight-through gradients of a quantized convolution: XLA's own
    convolution gradients at the dequantized operands, zero where an operand
    was clipped. (The patches' quantization is elementwise with one scale,
    and zero padding stays zero, so this is the transpose of the patch GEMM's
    straight-through gradients, in XLA's fast convolutions.)"""
    x, w, sa, za, sb, zb, leaves = residuals
    sa, za = sa.reshape(()), za.reshape(())
    # b's per-output-channel scales (G, 1, Og) -> along the weight's output dim.
    rhs_out = conv.dn[1][0]
    shape = [1] * w.ndim
    shape[rhs_out] = w.shape[rhs_out]
    sb = sb.reshape(-1).reshape(shape) if sb.size > 1 else sb.reshape(())
    zb = zb.reshape(-1).reshape(shape) if zb.size > 1 else zb.reshape(())
    bits, signed = cfg.bits, cfg.signed
    xd = dequantize(quantize(x, sa, za, bits[0], signed[0]), sa, za)
    wd = dequantize(quantize(w, sb, zb, bits[1], signed[1]), sb, zb)
    _, vjp = jax.vjp(conv.native, xd, wd)
    dx, dw = vjp(g)
    dx = dx * _inside(x, sa, za, bits[0], signed[0])
    dw = dw * _inside(w, sb, zb, bits[1], signed[1])
    return dx, dw, float_gemm.zero_cotangents(leaves)


_ste_conv.defvjp(_ste_conv_fwd, _ste_conv_bwd)


def quantized_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count: int,
    q: Quantized,
    *,
    options: KernelOptions | None = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """``lax.conv_general_dilated`` under an integer multiplier: the input's
    patches (``lax.conv_general_dilated_patches``) times the weight as a
    quantized GEMM, one per feature group (depthwise and grouped convolutions
    batch their groups in one kernel call). The input is quantized per
    tensor as patches (min-max gives the input's own range; percentile and
    MSE calibrations see each value as often as it occurs in the patches).
    Straight-through gradients are XLA's convolution gradients at the
    dequantized operands (masked where clipped); the other estimators flow
    through the patch GEMM's and XLA's patch extraction."""
    check_quantizable("lhs", lhs)
    check_quantizable("rhs", rhs)
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    conv = _Conv(
        tuple(window_strides), padding if isinstance(padding, str) else tuple(map(tuple, padding)),
        None if lhs_dilation is None else tuple(lhs_dilation),
        None if rhs_dilation is None else tuple(rhs_dilation), dn, feature_group_count,
    )  # fmt: skip
    cfg, leaves = _config(q, options)
    x, w = lhs.astype(jnp.float32), rhs.astype(jnp.float32)
    if cfg.gradient == "ste" and all(s is None for s in leaves[2]):
        out = _ste_conv(cfg, conv, x, w, leaves)
    else:
        (out,) = _patch_gemm(conv, x, w, lambda a, b: (quantized_bmm(cfg, a, b, leaves),))
    return out.astype(out_dtype)
