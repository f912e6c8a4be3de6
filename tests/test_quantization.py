"""Quantized GEMMs of float operands under integer multipliers: calibration,
the exact integer sums with zero points, each gradient estimator against an
independent NumPy computation, and the Flax/Policy/vmap integration."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import approxjax as ax
from approxjax._src.arithmetic import quantization as qz
from approxjax._src.ops.quantized_gemm import derivative_factors

MATMUL = (((1,), (0,)), ((), ()))


def operands(seed, m=12, k=40, n=9):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) * np.linspace(0.05, 0.5, n)).astype(np.float32)
    return x, w


def np_quantize(x, axis, bits, signed, symmetric):
    """min-max quantization in NumPy (the definition in quantization.py)."""
    qmin, qmax = ax.integer.code_range(bits, signed)
    red = tuple(a for a in range(x.ndim) if a != axis) if axis is not None else None
    lo = np.minimum(x.min(axis=red, keepdims=True), 0)
    hi = np.maximum(x.max(axis=red, keepdims=True), 0)
    if symmetric:
        top = np.maximum(-lo, hi) if signed else hi
        s = (top / qmax).astype(np.float32)
        z = np.zeros_like(s, dtype=np.int64)
    else:
        s = ((hi - lo) / (qmax - qmin)).astype(np.float32)
        z = np.clip(np.round(qmin - lo / s), qmin, qmax).astype(np.int64)
    q = np.clip(np.round(x / s) + z, qmin, qmax).astype(np.int64)
    return q, s, z


def test_round_trip_and_per_channel_scales():
    x, w = operands(0)
    for bits, signed in ((8, True), (4, True), (8, False)):
        for sym in (True, False):
            if signed is False and sym:
                continue
            spec = ax.QuantSpec(symmetric=sym, per_channel=True)
            s, z = qz.calibrate(jnp.asarray(w), (0,), bits, signed, spec)
            q = qz.quantize(jnp.asarray(w), s, z, bits, signed)
            qn, sn, zn = np_quantize(w, 1, bits, signed, sym)
            np.testing.assert_array_equal(np.asarray(q), qn)
            np.testing.assert_allclose(np.asarray(s), sn, rtol=1e-6)
            back = np.asarray(qz.dequantize(q, s, z))
            assert (np.abs(back - w) <= np.asarray(s) / 2 * (1 + 1e-5)).all()
            assert s.shape == (1, w.shape[1])  # one scale per output channel
    # unsigned symmetric codes hold x >= 0 only
    s, z = qz.calibrate(jnp.asarray(x), (0, 1), 8, False, ax.QuantSpec())
    assert int(z.item()) == 0 and float(s.item()) == pytest.approx(x.max() / 255)


def test_calibrations():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(4096).astype(np.float32)
    x[7] = 40.0  # an outlier
    xs = jnp.asarray(x)
    scale = {}
    for cal in ("minmax", "percentile", "mse"):
        s, z = qz.calibrate(xs, (0,), 8, True, ax.QuantSpec(calibration=cal, percentile=99.9))
        scale[cal] = float(s[0])
        err = np.mean((np.asarray(qz.dequantize(qz.quantize(xs, s, z, 8, True), s, z)) - x) ** 2)
        scale[cal + "_err"] = err
    assert scale["minmax"] == pytest.approx(40.0 / 127)
    assert scale["percentile"] == pytest.approx(np.percentile(np.abs(x), 99.9) / 127, rel=1e-5)
    assert scale["mse"] < scale["minmax"] and scale["mse_err"] < scale["minmax_err"]
    with pytest.raises(ValueError, match="calibration must be one of"):
        ax.QuantSpec(calibration="kl")
    with pytest.raises(ValueError, match="percentile must be in"):
        ax.QuantSpec(calibration="percentile", percentile=30)


@pytest.mark.parametrize("sym", [True, False])
def test_forward_sums_with_zero_points(sym):
    """The table sees raw codes; the zero-point terms are exact."""
    x, w = operands(2)
    mult = ax.integer.mitchell(8, signed=True)
    q = ax.Quantized(mult, lhs=ax.QuantSpec(symmetric=sym), rhs=ax.QuantSpec(per_channel=True))
    got = np.asarray(ax.dot_general(x, w, MATMUL, multiplier=q))
    qa, sa, za = np_quantize(x, None, 8, True, sym)
    qb, sb, zb = np_quantize(w, 1, 8, True, True)
    table = np.asarray(mult.table, np.int64)
    lut_sum = table[(qa & 255)[:, :, None], (qb & 255)[None, :, :]].sum(axis=1)
    c = lut_sum - zb * qa.sum(1, keepdims=True) - za * qb.sum(0, keepdims=True)
    c = c + x.shape[1] * za * zb
    want = c.astype(np.float32) * (sa * sb).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    # the exact multiplier gives sum (qa - za)(qb - zb) exactly
    exact = ax.Quantized(ax.integer.exact(8), lhs=ax.QuantSpec(symmetric=sym))
    got = np.asarray(ax.dot_general(x, w, MATMUL, multiplier=exact))
    c = (qa - za) @ (qb - zb)
    np.testing.assert_array_equal(got, c.astype(np.float32) * (sa * sb).astype(np.float32))


def _grads(q, x, w, g):
    _, vjp = jax.vjp(lambda x, w: ax.dot_general(x, w, MATMUL, multiplier=q), x, w)
    return [np.asarray(t) for t in vjp(jnp.asarray(g))]


def test_ste_and_float_gradients():
    x, w = operands(3)
    x[0, 0] = 100.0  # clips under a percentile calibration: no gradient there
    g = np.random.default_rng(4).standard_normal((x.shape[0], w.shape[1])).astype(np.float32)
    spec = ax.QuantSpec(calibration="percentile", percentile=99.0)
    q = ax.Quantized(ax.integer.drum(8, 4), lhs=spec)
    dx, dw = _grads(q, x, w, g)
    s, z = qz.calibrate(jnp.asarray(x), (0, 1), 8, True, spec)
    qa = np.asarray(qz.quantize(jnp.asarray(x), s, z, 8, True))
    xq = np.asarray(qz.dequantize(qa, s, z))
    qb, sb, zb = np_quantize(w, 1, 8, True, True)
    wq = ((qb - zb) * sb).astype(np.float32)
    inside = (np.abs(np.round(x / np.asarray(s))) <= 127).astype(np.float32)
    assert inside[0, 0] == 0 and inside.mean() > 0.95
    np.testing.assert_allclose(dx, (g @ wq.T) * inside, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, xq.T @ g, rtol=1e-5, atol=1e-5)
    # through a float multiplier: the same GEMMs under mitchell(7)
    qf = ax.Quantized(
        ax.integer.drum(8, 4), lhs=spec, gradient="float", grad_multiplier=ax.mitchell(7)
    )
    dxf, dwf = _grads(qf, x, w, g)
    want = ax.dot_general(jnp.asarray(g), jnp.asarray(wq.T), MATMUL, multiplier=ax.mitchell(7))
    np.testing.assert_allclose(dxf, np.asarray(want) * inside, rtol=1e-6, atol=1e-6)
    want = ax.dot_general(jnp.asarray(xq.T), jnp.asarray(g), MATMUL, multiplier=ax.mitchell(7))
    np.testing.assert_allclose(dwf, np.asarray(want), rtol=1e-6, atol=1e-6)


def test_lut_gradient_against_dense_numpy():
    """With a 4-bit table and full rank, the low-rank derivative is the
    dense one: compare with the derivative tables applied product by product."""
    x, w = operands(5, m=6, k=10, n=5)
    mult = ax.integer.mitchell(4, signed=True)
    q = ax.Quantized(
        mult, lhs=ax.QuantSpec(symmetric=False), gradient="lut", lut_rank=16, smoothing=1
    )
    g = np.random.default_rng(6).standard_normal((6, 5)).astype(np.float32)
    dx, dw = _grads(q, x, w, g)
    qa, sa, za = np_quantize(x, None, 4, True, False)
    qb, sb, zb = np_quantize(w, 1, 4, True, True)
    v = mult.values(0)
    order = np.argsort(v)
    t = np.asarray(mult.table, np.float64)[order][:, order]  # by value
    n = t.shape[0]
    hi, lo = np.minimum(np.arange(n) + 1, n - 1), np.maximum(np.arange(n) - 1, 0)
    da_v = (t[hi] - t[lo]) / (hi - lo)[:, None]
    db_v = (t[:, hi] - t[:, lo]) / (hi - lo)[None, :]
    pos = np.argsort(order)  # bit pattern -> value position
    da_t = da_v[pos][:, pos]
    db_t = db_v[pos][:, pos]
    ia, ib = qa & 15, qb & 15
    d_a = da_t[ia[:, :, None], ib[None, :, :]]  # (M, K, N)
    d_b = db_t[ia[:, :, None], ib[None, :, :]]
    want_dx = np.einsum("mn,mkn->mk", g * sb, d_a - zb[None, :, :])
    want_dw = sa * np.einsum("mn,mkn->kn", g, d_b - za)
    inside = ((np.round(x / sa) + za >= -8) & (np.round(x / sa) + za <= 7)).astype(np.float64)
    np.testing.assert_allclose(dx, want_dx * inside, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(dw, want_dw, rtol=2e-4, atol=2e-4)
    # the exact multiplier's derivative is the other operand: "lut" == "ste"
    x, w = operands(7)
    g = np.random.default_rng(8).standard_normal((12, 9)).astype(np.float32)
    lut = _grads(ax.Quantized(ax.integer.exact(8), gradient="lut", lut_rank=2), x, w, g)
    ste = _grads(ax.Quantized(ax.integer.exact(8)), x, w, g)
    for a, b in zip(lut, ste, strict=True):  # to the float32 SVD's accuracy
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * np.abs(b).max())


def test_derivative_factors_rank():
    mult = ax.integer.drum(6, 3, signed=False)
    (p, q), (p2, q2) = derivative_factors(mult.table, mult.bits, mult.signed, 2, 5)
    assert p.shape == (64, 5) and q.shape == (64, 5) and p2.shape == (64, 5)


def test_quantized_gradients_through_the_table():
    x, w = operands(8)
    g = np.random.default_rng(9).standard_normal((12, 9)).astype(np.float32)
    mult = ax.integer.truncated(8, 5, signed=True)
    dx, dw = _grads(ax.Quantized(mult, gradient="quantized"), x, w, g)
    qa, sa, _ = np_quantize(x, None, 8, True, True)
    qb, sb, _ = np_quantize(w, 1, 8, True, True)
    table = np.asarray(mult.table, np.int64)
    gs = g * sb
    q1, s1, _ = np_quantize(gs, None, 8, True, True)
    want_dx = table[(q1 & 255)[:, None, :], (qb & 255)[None, :, :]].sum(2) * s1
    q2, s2, _ = np_quantize(g, None, 8, True, True)
    want_dw = table[(qa.T & 255)[:, :, None], (q2 & 255)[None, :, :]].sum(1) * (sa * s2)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-6, atol=1e-6)


def test_bad_settings():
    mult = ax.integer.mitchell(8)
    with pytest.raises(TypeError, match="takes an IntegerMultiplier"):
        ax.Quantized(ax.mitchell(7))
    with pytest.raises(ValueError, match="gradient must be one of"):
        ax.Quantized(mult, gradient="sign")
    with pytest.raises(TypeError, match="needs grad_multiplier"):
        ax.Quantized(mult, gradient="float")
    with pytest.raises(ValueError, match="unsigned operands"):
        ax.Quantized(ax.integer.exact(8, signed=False), gradient="quantized")
    with pytest.raises(ValueError, match="per-channel scales are for the rhs"):
        ax.Quantized(mult, lhs=ax.QuantSpec(per_channel=True))
    with pytest.raises(ValueError, match="lut_rank must be"):
        ax.Quantized(mult, lut_rank=0)
    x, w = operands(10)
    with pytest.raises(ValueError, match="all zeros"):
        ax.dot_general(np.zeros_like(x), w, MATMUL, multiplier=mult)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"lhs\[1, 2\] = .*nan.*cannot be quantized"):
        ax.dot_general(x, w, MATMUL, multiplier=mult)
    with pytest.raises(ValueError, match="batch_group_count > 1"):
        ax.conv_general_dilated(
            np.ones((2, 5, 5, 2), np.float32), np.ones((3, 3, 2, 4), np.float32), (1, 1),
            "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), batch_group_count=2,
            multiplier=mult,
        )  # fmt: skip


CONVS = [
    (("NHWC", "HWIO", "NHWC"), (2, 9, 9, 6), (3, 3, 6, 8), 1, (1, 1), "SAME", (1, 1)),
    (("NCHW", "OIHW", "NCHW"), (2, 6, 9, 9), (8, 3, 3, 3), 2, (2, 1), "VALID", (1, 2)),
    (("NHWC", "HWIO", "NHWC"), (2, 9, 9, 6), (3, 3, 1, 6), 6, (1, 1), [(1, 2), (0, 1)], (1, 1)),
]


@pytest.mark.parametrize("case", CONVS, ids=["nhwc", "grouped-strided-dilated", "depthwise"])
def test_convolutions(case):
    """The exact multiplier gives XLA's integer convolution of the codes,
    scaled; STE gradients are float32 convolutions of the dequantized operands."""
    dn, xs, ws, groups, strides, pad, rd = case
    rng = np.random.default_rng(12)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) * 0.2).astype(np.float32)
    conv = dict(rhs_dilation=rd, dimension_numbers=dn, feature_group_count=groups)
    mult = ax.Quantized(ax.integer.exact(8), rhs=ax.QuantSpec())  # per tensor, to compare
    got = ax.conv_general_dilated(x, w, strides, pad, multiplier=mult, **conv)
    qa, sa, _ = np_quantize(x, None, 8, True, True)
    qb, sb, _ = np_quantize(w, None, 8, True, True)
    c = jax.lax.conv_general_dilated(
        qa.astype(np.int32), qb.astype(np.int32), strides, pad,
        preferred_element_type=jnp.int32, **conv,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(got), np.asarray(c).astype(np.float32) * (sa * sb))
    xq, wq = (qa * sa).astype(np.float32), (qb * sb).astype(np.float32)
    g = rng.standard_normal(got.shape).astype(np.float32)
    _, vjp = jax.vjp(
        lambda a, b: ax.conv_general_dilated(a, b, strides, pad, multiplier=mult, **conv), x, w
    )
    _, ref = jax.vjp(
        lambda a, b: jax.lax.conv_general_dilated(
            a, b, strides, pad, precision=jax.lax.Precision.HIGHEST, **conv
        ), xq, wq,
    )  # fmt: skip
    for a, b in zip(vjp(jnp.asarray(g)), ref(jnp.asarray(g)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_conv_straight_through_gradients_equal_the_patch_gemms():
    """Asymmetric per-channel percentile quantization (some values clip): the
    convolution's straight-through gradients (XLA's convolution gradients at
    the dequantized operands, masked) equal those of the same quantized GEMM
    on explicit patches, differentiated through the patches."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 9, 9, 3)).astype(np.float32)
    w = (rng.standard_normal((3, 3, 3, 5)) * 0.3).astype(np.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    spec = dict(symmetric=False, calibration="percentile", percentile=95.0)
    mult = ax.Quantized(
        ax.integer.mitchell(8), lhs=ax.QuantSpec(**spec), rhs=ax.QuantSpec(per_channel=True, **spec)
    )

    def conv(a, b):
        return ax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=dn, multiplier=mult)

    def patch_gemm(a, b):
        p = jax.lax.conv_general_dilated_patches(a, (3, 3), (1, 1), "SAME", dimension_numbers=dn)
        wg = jnp.transpose(b, (3, 2, 0, 1)).reshape(5, 27).T  # features (c, kh, kw)
        out = ax.dot_general(p.reshape(-1, 27), wg, (((1,), (0,)), ((), ())), multiplier=mult)
        return out.reshape(2, 9, 9, 5)

    got, vjp = jax.vjp(conv, x, w)
    want, ref = jax.vjp(patch_gemm, x, w)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    g = jnp.asarray(rng.standard_normal(got.shape).astype(np.float32))
    (dx, dw), (rx, rw) = vjp(g), ref(g)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(rx), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(rw), rtol=1e-4, atol=1e-5)
    assert np.sum(np.asarray(dx) == 0) > 0 and np.sum(np.asarray(dw) == 0) > 0  # clipped


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = ax.nn.Conv(4, (3,), padding="SAME")(x[..., None])  # a convolution too
        x = nn.relu(ax.nn.Dense(32)(jnp.concatenate([x, h.reshape(x.shape[0], -1)], -1)))
        return ax.nn.Dense(3)(x)


def test_training_under_policies_and_vmap():
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.standard_normal((64, 8)), jnp.float32)
    y = jnp.asarray((x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5))
    model = MLP()
    params = model.init(jax.random.key(0), x)
    tx = optax.adam(0.03)

    def loss(params, mult):
        with ax.using(mult):
            logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train(params, mult):
        state = tx.init(params)

        def step(carry, _):
            p, s = carry
            value, grads = jax.value_and_grad(loss)(p, mult)
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        (params, _), values = jax.lax.scan(step, (params, state), None, length=40)
        return values

    for mult in (
        ax.Quantized(ax.integer.drum(8, 4), gradient="ste"),
        ax.Quantized(ax.integer.mitchell(8), gradient="lut"),
        ax.Policy(default=ax.integer.kulkarni(8, signed=True), first_exact=True),
    ):
        values = np.asarray(train(params, mult))
        assert values[-1] < 0.6 * values[0], (mult, values[[0, -1]])
    # a sweep over three multipliers in one program
    stack = ax.stack([ax.integer.drum(8, k) for k in (3, 4, 6)])
    values = jax.vmap(lambda m: train(params, ax.Quantized(m)))(stack)
    assert values.shape == (3, 40) and (values[:, -1] < values[:, 0]).all()


def test_approximate_on_an_unmodified_model():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    model = Net()
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    params = model.init(jax.random.key(1), x)
    exact = ax.approximate(lambda p, x: model.apply(p, x), ax.Quantized(ax.integer.exact(8)))
    mitchell = ax.approximate(lambda p, x: model.apply(p, x), ax.integer.mitchell(8))
    want = model.apply(params, x)
    scale = float(jnp.abs(want).max())
    # 8-bit quantization alone moves the outputs by about 1%; Mitchell's products by more
    assert float(jnp.abs(jax.jit(exact)(params, x) - want).max()) < 0.03 * scale
    err = float(jnp.abs(jax.jit(mitchell)(params, x) - want).max())
    assert 0.03 * scale < err < 0.3 * scale
    grads = jax.grad(lambda p: mitchell(p, x).sum())(params)
    assert jax.tree.map(jnp.shape, grads) == jax.tree.map(jnp.shape, params)


# --- given and learned scales (Quantized.with_scales) ------------------------


def _lsq(x, s, bits, g):
    """NumPy LSQ: codes, and the scale's gradient for an incoming gradient g
    of the dequantized operand (summed over axis 0 for per-column scales)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = x / s
    r = np.round(v)
    d = np.where(r < lo, lo, np.where(r > hi, hi, r - v))
    per_column = np.ndim(s) > 0
    n = x.shape[0] if per_column else x.size
    return np.clip(r, lo, hi), (g * d).sum(0 if per_column else None) / np.sqrt(n * hi)


def test_given_scales_forward_and_lsq_gradients():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32)).astype(np.float32)
    w = rng.standard_normal((32, 8)).astype(np.float32)
    mult = ax.integer.drum(4, 2)
    q = ax.Quantized(mult)
    sa, sb = np.float32(0.5), rng.uniform(0.2, 0.6, 8).astype(np.float32)

    def run(sa, sb):
        return ax.dot_general(x, w, MATMUL, multiplier=q.with_scales(sa, sb))

    out, vjp = jax.vjp(run, sa, sb)
    g = rng.standard_normal(out.shape).astype(np.float32)
    ga, gb = vjp(jnp.asarray(g))
    qa, _ = _lsq(x, sa, 4, 0)
    qb, _ = _lsq(w, sb, 4, 0)
    table = np.asarray(mult.table, np.int64)
    sums = table[qa.astype(int)[:, :, None] & 15, qb.astype(int)[None] & 15].sum(1)
    np.testing.assert_array_equal(np.asarray(out), sums.astype(np.float32) * (sa * sb))
    # the straight-through gradients of the dequantized operands, then LSQ
    _, want_a = _lsq(x, sa, 4, g @ (qb * sb).T)
    _, want_b = _lsq(w, sb, 4, (qa * sa).T @ g)
    np.testing.assert_allclose(float(ga), want_a, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(gb), want_b, rtol=1e-4, atol=1e-6)
    # a trained scale that crossed zero acts by its magnitude, its gradient signed
    out_neg, vjp_neg = jax.vjp(run, -sa, sb)
    np.testing.assert_array_equal(np.asarray(out_neg), np.asarray(out))
    assert float(vjp_neg(jnp.asarray(g))[0]) == -float(ga)
    # scales equal to the calibrated ones give the calibrated result, bit for bit
    cal_a, _ = qz.calibrate(jnp.asarray(x), (0, 1), 4, True, q.lhs)
    cal_b, _ = qz.calibrate(jnp.asarray(w), (0,), 4, True, q.rhs)
    np.testing.assert_array_equal(
        np.asarray(run(cal_a.reshape(()), cal_b.reshape(-1))),
        np.asarray(ax.dot_general(x, w, MATMUL, multiplier=q)),
    )


def test_given_conv_scales_equal_the_patch_gemm():
    rng = np.random.default_rng(1)
    img = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    q = ax.Quantized(ax.integer.mitchell(6))
    dn = ("NHWC", "HWIO", "NHWC")

    def conv(sa, sb):
        return ax.conv_general_dilated(img, k, (1, 1), "SAME", dimension_numbers=dn,
                                       multiplier=q.with_scales(sa, sb))  # fmt: skip

    def patches(sa, sb):
        p = jax.lax.conv_general_dilated_patches(img, (3, 3), (1, 1), "SAME",
                                                 dimension_numbers=dn)  # fmt: skip
        wk = jnp.transpose(k, (2, 0, 1, 3)).reshape(27, 4)  # (in channel, window) rows
        return ax.dot_general(p.reshape(-1, 27), wk, MATMUL, multiplier=q.with_scales(sa, sb))

    sa, sb = jnp.float32(0.1), jnp.asarray([0.05, 0.06, 0.07, 0.08], jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(conv(sa, sb)).reshape(-1, 4), np.asarray(patches(sa, sb))
    )
    got = jax.grad(lambda *s: conv(*s).sum(), (0, 1))(sa, sb)
    want = jax.grad(lambda *s: patches(*s).sum(), (0, 1))(sa, sb)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


def test_learned_scales_reduce_the_quantization_error():
    """LSQ from scales 8x too large: Adam on the scales alone cuts the error
    of a 4-bit GEMM against float32 at least fourfold."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 48)).astype(np.float32)
    w = rng.standard_normal((48, 16)).astype(np.float32)
    q = ax.Quantized(ax.integer.exact(4))
    target = x @ w

    def loss(scales):
        out = ax.dot_general(x, w, MATMUL, multiplier=q.with_scales(*scales))
        return jnp.mean((out - target) ** 2)

    scales = (jnp.float32(3.0), jnp.full((16,), 3.0, jnp.float32))
    opt = optax.adam(0.05)
    state = opt.init(scales)
    first = float(loss(scales))
    step = jax.jit(lambda s, st: _adam_step(opt, loss, s, st))
    for _ in range(150):
        scales, state = step(scales, state)
    assert float(loss(scales)) < first / 4


def _adam_step(opt, loss, scales, state):
    grads = jax.grad(loss)(scales)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(scales, updates), state


def test_given_zero_points_forward_and_lsq_plus_gradients():
    """LSQ+ (asymmetric sides): a given zero point z is the code round(z);
    its gradient is 0 inside the range and -s where clipped, the scale's
    round(x/s) - x/s inside and q - round(z) where clipped, each times the
    incoming gradient and 1 / sqrt(n q_max)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((16, 32)) + 1.5).astype(np.float32)  # off-centre: zero points
    w = rng.standard_normal((32, 8)).astype(np.float32)
    mult = ax.integer.exact(4, signed=False)
    asym = ax.QuantSpec(symmetric=False)
    q = ax.Quantized(mult, lhs=asym, rhs=ax.QuantSpec(symmetric=False, per_channel=True))
    sa, za = np.float32(0.3), np.float32(4.4)
    sb = rng.uniform(0.2, 0.4, 8).astype(np.float32)
    zb = rng.uniform(5.0, 10.0, 8).astype(np.float32)

    def run(sa, za, sb, zb):
        return ax.dot_general(x, w, MATMUL, multiplier=q.with_scales(sa, sb, lhs_zero=za,
                                                                     rhs_zero=zb))  # fmt: skip

    out, vjp = jax.vjp(run, sa, za, sb, zb)
    g = rng.standard_normal(out.shape).astype(np.float32)
    ga, gza, gb, gzb = (np.asarray(t, np.float64) for t in vjp(jnp.asarray(g)))

    def fake(t, s, z):  # NumPy: codes, dequantized values, and the two derivatives
        zi = np.round(z)
        q_ = np.round(t / s) + zi
        c = np.clip(q_, 0, 15)
        ds = np.where(c == q_, np.round(t / s) - t / s, c - zi)
        dz = np.where(c == q_, 0.0, -s)
        return c, (c - zi) * s, ds, dz

    ca, xa, dsa, dza = fake(x.astype(np.float64), sa, za)
    cb, xb, dsb, dzb = fake(w.astype(np.float64), sb, zb)
    assert 0 < (dza != 0).mean() < 1 and 0 < (dzb != 0).mean() < 1  # some values clip
    np.testing.assert_allclose(np.asarray(out), xa @ xb, rtol=1e-6, atol=1e-5)
    gx, gw = g @ xb.T, xa.T @ g  # straight-through gradients of the dequantized operands
    np.testing.assert_allclose(ga, (gx * dsa).sum() / np.sqrt(x.size * 15), rtol=1e-4)
    np.testing.assert_allclose(gza, (gx * dza).sum() / np.sqrt(x.size * 15), rtol=1e-4)
    np.testing.assert_allclose(gb, (gw * dsb).sum(0) / np.sqrt(32 * 15), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(gzb, (gw * dzb).sum(0) / np.sqrt(32 * 15), rtol=1e-4, atol=1e-7)
    # the calibrated scales and zero points give the calibrated result, bit for bit
    cal_a, cal_za = qz.calibrate(jnp.asarray(x), (0, 1), 4, False, q.lhs)
    cal_b, cal_zb = qz.calibrate(jnp.asarray(w), (0,), 4, False, q.rhs)
    np.testing.assert_array_equal(
        np.asarray(run(cal_a.reshape(()), cal_za.reshape(()).astype(jnp.float32),
                       cal_b.reshape(-1), cal_zb.reshape(-1).astype(jnp.float32))),
        np.asarray(ax.dot_general(x, w, MATMUL, multiplier=q)),
    )  # fmt: skip


def test_learned_zero_points_in_flax_layers():
    """calibration="learned" on an asymmetric side: the layer owns a zero
    point beside the scale (LSQ+), first set by calibration, and trains it."""
    learned = ax.QuantSpec(calibration="learned", symmetric=False)
    q = ax.Quantized(ax.integer.exact(6, signed=False), lhs=learned)
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (8, 12))) + 0.5
    model = ax.nn.Dense(4)
    with ax.using(q):
        params = model.init(jax.random.key(1), x)
    p = params["params"]
    assert sorted(p) == ["bias", "kernel", "lhs_scale", "lhs_zero"]
    want_s, want_z = qz.calibrate(x, (0, 1), 6, False, qz.QuantSpec(symmetric=False))
    assert float(p["lhs_scale"]) == float(want_s.reshape(()))
    assert float(p["lhs_zero"]) == float(want_z.reshape(()))
    with ax.using(
        ax.Quantized(ax.integer.exact(6, signed=False), lhs=qz.QuantSpec(symmetric=False))
    ):
        calibrated = model.apply({"params": {"kernel": p["kernel"], "bias": p["bias"]}}, x)
    with ax.using(q):
        out = model.apply(params, x)
        grads = jax.grad(lambda pp: jnp.sum(model.apply(pp, 3 * x) ** 2))(params)["params"]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(calibrated))
    assert float(jnp.abs(grads["lhs_zero"])) > 0  # 3x the range: values clip
    again = ax.nn.calibrate_scales(model, params, [x, 2 * x], q)
    s2, z2 = qz.calibrate(
        jnp.concatenate([x, 2 * x]), (0, 1), 6, False, qz.QuantSpec(symmetric=False)
    )
    assert float(again["params"]["lhs_scale"]) == float(s2.reshape(()))
    assert float(again["params"]["lhs_zero"]) == float(z2.reshape(()))


def test_given_scales_bad_input():
    q = ax.Quantized(ax.integer.exact(8), lhs=ax.QuantSpec(symmetric=False))
    with pytest.raises(ValueError, match="give its scale and its zero point together"):
        q.with_scales(lhs=0.1)
    with pytest.raises(ValueError, match="rhs is quantized symmetrically: its zero point is 0"):
        q.with_scales(lhs=0.1, lhs_zero=3.0, rhs=np.ones(3), rhs_zero=np.ones(3))
    with pytest.raises(ValueError, match=r"lhs zero point must be a scalar; got shape \(2,\)"):
        q.with_scales(lhs=0.1, lhs_zero=np.ones(2))
    q = ax.Quantized(ax.integer.exact(8), rhs=ax.QuantSpec(per_channel=False))
    with pytest.raises(ValueError, match=r"rhs scale must be a scalar; got shape \(3,\)"):
        q.with_scales(rhs=np.ones(3))
    q = ax.Quantized(ax.integer.exact(8)).with_scales(rhs=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="3 entries for 5 output channels"):
        ax.dot_general(np.ones((2, 4), np.float32), np.ones((4, 5), np.float32), MATMUL,
                       multiplier=q)  # fmt: skip
    with pytest.raises(ValueError, match="has given scales"):
        ax.stack([q, q])


def test_learned_scales_in_flax_layers():
    """calibration="learned": approxjax's Dense and Conv own their scales,
    first set to the min-max scales of the operands they see (so the first
    forward equals min-max calibration bit for bit), trained by LSQ; Flax
    attention learns none."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(ax.nn.Conv(4, (3, 3))(x))
            return ax.nn.Dense(5)(x.reshape(x.shape[0], -1))

    learned = ax.QuantSpec(calibration="learned")
    mult = ax.integer.mitchell(6)
    q = ax.Quantized(mult, lhs=learned, rhs=ax.QuantSpec(calibration="learned", per_channel=True))
    minmax = ax.Quantized(mult)
    assert q.learns_scales and q.name == "mitchell6s/ste/learned"
    x = jax.random.normal(jax.random.key(0), (8, 6, 6, 1))
    model = Net()
    with ax.using(q):
        params = model.init(jax.random.key(1), x)
    shapes = jax.tree.map(jnp.shape, params)["params"]
    assert shapes["Conv_0"]["lhs_scale"] == () and shapes["Conv_0"]["rhs_scale"] == (4,)
    assert shapes["Dense_0"]["rhs_scale"] == (5,)
    kernel = params["params"]["Dense_0"]["kernel"]
    want, _ = qz.calibrate(kernel, (0,), 6, True, qz.QuantSpec())
    np.testing.assert_array_equal(params["params"]["Dense_0"]["rhs_scale"], want.reshape(-1))
    want, _ = qz.calibrate(x, (0, 1, 2, 3), 6, True, qz.QuantSpec())
    assert float(params["params"]["Conv_0"]["lhs_scale"]) == float(want.reshape(()))
    with ax.using(q):
        out = model.apply(params, x)
    plain = {"params": {k: {n: v for n, v in layer.items() if "scale" not in n}
                        for k, layer in params["params"].items()}}  # fmt: skip
    with ax.using(minmax):
        np.testing.assert_array_equal(np.asarray(out), np.asarray(model.apply(plain, x)))
    # parameters made without the scales grow them in an apply that may add some
    with ax.using(q):
        _, grown = model.apply(plain, x, mutable=["params"], rngs={"params": jax.random.key(2)})
    for a, b in zip(jax.tree.leaves(grown), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def loss(p):
        with ax.using(q):
            return jnp.mean(model.apply(p, x) ** 2)

    grads = jax.grad(loss)(params)["params"]
    assert float(jnp.abs(grads["Conv_0"]["lhs_scale"])) > 0
    assert float(jnp.abs(grads["Dense_0"]["rhs_scale"]).sum()) > 0
    attention = ax.nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)
    seq = jax.random.normal(jax.random.key(3), (2, 5, 8))
    with ax.using(q):
        p = attention.init(jax.random.key(4), seq)
    assert not any("scale" in str(path) for path, _ in jax.tree_util.tree_leaves_with_path(p))


def test_calibrate_scales_over_a_set():
    """ax.nn.calibrate_scales: each learned scale calibrated over the whole
    set (min-max: the largest min-max scale of the batches; percentile,
    MSE); other parameters unchanged."""
    learned = ax.QuantSpec(calibration="learned")
    q = ax.Quantized(ax.integer.exact(8), lhs=learned, rhs=ax.QuantSpec(per_channel=True))
    model = ax.nn.Dense(3)
    batches = [jax.random.normal(jax.random.key(i), (4, 6)) * (i + 1) for i in range(3)]
    params = model.init(jax.random.key(9), batches[0])  # no scales: made outside using()
    got = ax.nn.calibrate_scales(model, params, batches, q)
    scales = [qz.calibrate(b, (0, 1), 8, True, qz.QuantSpec())[0] for b in batches]
    want = max(float(s.reshape(())) for s in scales)
    assert float(got["params"]["lhs_scale"]) == want
    assert "rhs_scale" not in got["params"]  # the weights calibrate min-max
    np.testing.assert_array_equal(got["params"]["kernel"], params["params"]["kernel"])
    with pytest.raises(ValueError, match="at least one batch"):
        ax.nn.calibrate_scales(model, params, [], q)
    with pytest.raises(ValueError, match="no layer learns scales"):
        ax.nn.calibrate_scales(model, params, batches, ax.Quantized(ax.integer.exact(8)))
    # percentile and MSE-optimal starts, over the whole set: the magnitudes'
    # percentile, and the clipping of least squared error on all its values
    # (4-bit codes: the MSE-optimal range clips the set's extremes)
    values = np.concatenate([np.asarray(b) for b in batches])
    everything = np.abs(values)
    for initial in ("percentile", "mse"):
        spec = ax.QuantSpec(calibration="learned", initial=initial, percentile=90.0)
        q4 = ax.Quantized(ax.integer.exact(4), lhs=spec)
        scale = float(ax.nn.calibrate_scales(model, params, batches, q4)["params"]["lhs_scale"])
        if initial == "percentile":
            assert scale == pytest.approx(np.percentile(everything, 90.0) / 7, rel=1e-6)
        else:

            def mse(s):
                return np.mean((np.clip(np.round(values / s), -8, 7) * s - values) ** 2)

            candidates = everything.max() / 7 * np.linspace(0.35, 1.0, 32)
            assert mse(scale) == pytest.approx(min(mse(c) for c in candidates), rel=1e-5)
            assert scale < 0.9 * everything.max() / 7  # clips the extremes
    with pytest.raises(ValueError, match="initial='mse' sets where a learned scale starts"):
        ax.QuantSpec(calibration="minmax", initial="mse")
    with pytest.raises(ValueError, match="initial must be one of"):
        ax.QuantSpec(calibration="learned", initial="learned")
