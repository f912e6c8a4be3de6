"""approxjax.conv_general_dilated against XLA's convolution and the reference model."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import bits, plan, random_nonzero
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

import approxjax as ax
from approxjax import reference as ref
from approxjax._src.kernels import ffi as _ffi
from approxjax._src.kernels.options import ARITHMETIC_OFF

LAYOUTS = {
    1: [None, ("NWC", "WIO", "NWC")],
    2: [None, ("NHWC", "HWIO", "NHWC"), ("NCHW", "HWIO", "NHWC")],
    3: [None, ("NDHWC", "DHWIO", "NDHWC")],
}


@st.composite
def conv_problems(draw):
    n = draw(st.integers(1, 3))
    groups = draw(st.sampled_from(["none", "feature", "depthwise", "batch"]))
    g = draw(st.integers(2, 3)) if groups != "none" else 1
    cin = draw(st.integers(1, 3))
    cout = draw(st.integers(1, 3))
    batch = draw(st.integers(1, 3))
    if groups == "feature":
        channels, out_feat, in_feat = cin * g, cout * g, cin
    elif groups == "depthwise":
        channels, out_feat, in_feat = g, g * cout, 1
    else:
        channels, out_feat, in_feat = cin, cout * (g if groups == "batch" else 1), cin
    if groups == "batch":
        batch *= g
    kernel = [draw(st.integers(1, 3)) for _ in range(n)]
    spatial = [draw(st.integers(k, k + 4)) for k in kernel]
    strides = [draw(st.integers(1, 2)) for _ in range(n)]
    lhs_dil = [draw(st.integers(1, 2)) for _ in range(n)]
    rhs_dil = [draw(st.integers(1, 2)) for _ in range(n)]
    padding = draw(
        st.one_of(
            st.sampled_from(["SAME", "VALID", "SAME_LOWER"]),
            st.lists(st.tuples(st.integers(-1, 2), st.integers(0, 2)), min_size=n, max_size=n),
        )
    )
    if isinstance(padding, str) and any(d > 1 for d in lhs_dil):
        padding = [(1, 0)] * n  # string padding is undefined with lhs dilation
    layout = draw(st.sampled_from(LAYOUTS[n]))
    lhs_shape = (batch, channels, *spatial)
    rhs_shape = (out_feat, in_feat, *kernel)
    if layout is not None:  # permute the NC... / OI... shapes into the layout
        spatial_chars = "DHW"[3 - n :]
        lhs_shape = tuple(lhs_shape[("NC" + spatial_chars).index(c)] for c in layout[0])
        rhs_shape = tuple(rhs_shape[("OI" + spatial_chars).index(c)] for c in layout[1])
    fg = g if groups in ("feature", "depthwise") else 1
    bg = g if groups == "batch" else 1
    return dict(
        lhs_shape=lhs_shape,
        rhs_shape=rhs_shape,
        window_strides=tuple(strides),
        padding=padding if isinstance(padding, str) else tuple(padding),
        lhs_dilation=tuple(lhs_dil),
        rhs_dilation=tuple(rhs_dil),
        dimension_numbers=layout,
        feature_group_count=fg,
        batch_group_count=bg,
    )


def _args(p, lhs, rhs):
    return (
        lhs,
        rhs,
        p["window_strides"],
        p["padding"],
        p["lhs_dilation"],
        p["rhs_dilation"],
        p["dimension_numbers"],
        p["feature_group_count"],
        p["batch_group_count"],
    )


def _short_mantissas(rng, shape):
    """Values with <= 4 fraction bits: products exact under truncated(10)."""
    return (np.round(rng.uniform(-4, 4, shape) * 4) / 4 + 0.125).astype(np.float32)


@given(problem=conv_problems(), seed=st.integers(0, 2**31))
def test_exact_table_equals_xla_convolution(problem, seed):
    rng = np.random.default_rng(seed)
    lhs = _short_mantissas(rng, problem["lhs_shape"])
    rhs = _short_mantissas(rng, problem["rhs_shape"])
    want = lax.conv_general_dilated(*_args(problem, lhs, rhs), precision=lax.Precision.HIGHEST)
    got = ax.conv_general_dilated(*_args(problem, lhs, rhs), multiplier=ax.truncated(10))
    assert got.shape == want.shape
    # Exact products of short values: sums are exact too (all terms are multiples of 1/256).
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _reference_conv(problem, lhs, rhs, lut):
    """Independent reference: XLA's own patches, then reference.dot_general."""
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, problem["dimension_numbers"])
    x = jnp.transpose(lhs, dn.lhs_spec)
    w = jnp.transpose(rhs, dn.rhs_spec)
    out = jnp.transpose(
        lax.conv_general_dilated(*_args(problem, lhs, rhs), precision=lax.Precision.HIGHEST),
        dn.out_spec,
    )
    assert problem["batch_group_count"] == 1
    patches = lax.conv_general_dilated_patches(
        x,
        w.shape[2:],
        problem["window_strides"],
        problem["padding"],
        problem["lhs_dilation"],
        problem["rhs_dilation"],
        precision=lax.Precision.HIGHEST,
    )  # (N, C * prod(K), *O) with C major
    g = problem["feature_group_count"]
    n, ckp = patches.shape[:2]
    osz = int(np.prod(patches.shape[2:]))
    a = patches.reshape(n, g, ckp // g, osz).transpose(1, 0, 3, 2).reshape(g, n * osz, ckp // g)
    og = w.shape[0] // g
    b = w.reshape(g, og, -1).transpose(0, 2, 1)
    y = ref.dot_general(a, b, (((2,), (1,)), ((0,), (0,))), lut)
    y = y.reshape(g, n, osz, og).transpose(1, 0, 3, 2).reshape(out.shape)
    bound = ref.accumulation_bound(
        np.asarray(ref.dot_general(jnp.abs(a), jnp.abs(b), (((2,), (1,)), ((0,), (0,))), lut))
        .reshape(g, n, osz, og)
        .transpose(1, 0, 3, 2)
        .reshape(out.shape),
        a.shape[-1],
    )
    return y, bound, dn


@given(problem=conv_problems(), seed=st.integers(0, 2**31))
def test_against_reference(problem, seed):
    if problem["batch_group_count"] > 1:
        return  # covered by the exact-table test (XLA's patches have no batch groups)
    rng = np.random.default_rng(seed)
    lhs = random_nonzero(rng, problem["lhs_shape"])
    rhs = random_nonzero(rng, problem["rhs_shape"])
    mult = ax.mitchell(7)
    got = ax.conv_general_dilated(*_args(problem, lhs, rhs), multiplier=mult)
    want, bound, dn = _reference_conv(problem, lhs, rhs, mult.lut)
    got = np.asarray(jnp.transpose(got, dn.out_spec), np.float64)
    assert np.all(np.abs(got - np.asarray(want)) <= bound + 1e-30)


def test_gradients_are_approximate_gemms(rng):
    x = random_nonzero(rng, (2, 3, 6, 6))
    w = random_nonzero(rng, (4, 3, 3, 3))
    mult = ax.mitchell(7)

    def loss(x, w, **kw):
        return jnp.sum(jnp.sin(ax.conv_general_dilated(x, w, (1, 1), "SAME", **kw)))

    gx, gw = jax.grad(loss, argnums=(0, 1))(x, w, multiplier=mult)
    ex, ew = jax.grad(loss, argnums=(0, 1))(x, w, multiplier=None)
    # Close to exact, but not exact: the backward GEMMs went through Mitchell.
    assert 0 < float(jnp.max(jnp.abs(gx - ex))) < 0.5 * float(jnp.max(jnp.abs(ex)))
    assert 0 < float(jnp.max(jnp.abs(gw - ew)))
    gx2, gw2 = jax.grad(loss, argnums=(0, 1))(
        x, w, multiplier=mult, input_grad_multiplier=None, weight_grad_multiplier=None
    )
    _, vjp = jax.vjp(
        lambda x, w: ax.conv_general_dilated(x, w, (1, 1), "SAME", multiplier=mult), x, w
    )
    y = ax.conv_general_dilated(x, w, (1, 1), "SAME", multiplier=mult)
    _, exact_vjp = jax.vjp(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME"), x, w)
    ex2, ew2 = exact_vjp(jnp.cos(y))
    np.testing.assert_allclose(gx2, ex2, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(gw2, ew2, rtol=2e-5, atol=2e-5)


def test_vmap_over_multipliers(rng):
    x = random_nonzero(rng, (2, 5, 5, 3))
    w = random_nonzero(rng, (3, 3, 3, 4))
    stack = ax.stack([ax.mitchell(5), ax.mbm(5), ax.truncated(5)])

    def f(mu):
        return ax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), multiplier=mu
        )

    got = jax.jit(jax.vmap(f))(stack)
    for i in range(3):
        np.testing.assert_array_equal(bits(got[i]), bits(f(stack[i])))


def test_conv_errors(rng):
    with pytest.raises(ValueError, match="string padding 'SAME' is not defined with lhs_dilation"):
        ax.conv_general_dilated(
            random_nonzero(rng, (1, 1, 4)),
            random_nonzero(rng, (1, 1, 2)),
            (1,),
            "SAME",
            (2,),
            multiplier=ax.mitchell(3),
        )
    x = random_nonzero(rng, (1, 4, 5, 5))
    w = random_nonzero(rng, (2, 3, 3, 3))
    with pytest.raises(ValueError, match="lhs has 4 input features, but rhs expects 3"):
        ax.conv_general_dilated(x, w, (1, 1), "SAME", multiplier=ax.mitchell(3))
    with pytest.raises(ValueError, match="window_strides must be 2 positive integers"):
        ax.conv_general_dilated(x, w[:, :1].repeat(4, 1), (0, 1), "SAME", multiplier=ax.mitchell(3))
    with pytest.raises(ValueError, match="padding must be"):
        ax.conv_general_dilated(
            x, w[:, :1].repeat(4, 1), (1, 1), [(1, 1)], multiplier=ax.mitchell(3)
        )
    with pytest.raises(TypeError, match="lhs must be float32"):
        ax.conv_general_dilated(x.astype(np.int32), w, (1, 1), "SAME", multiplier=ax.mitchell(3))


def test_chunked_patches_equal_whole_batch(rng, monkeypatch):
    from approxjax._src.ops import conv

    x = random_nonzero(rng, (6, 7, 7, 5))
    w = random_nonzero(rng, (3, 3, 5, 4))
    stack = ax.stack([ax.mitchell(7), ax.drum(7)])

    def run(mu):
        def loss(x, w):
            y = ax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), multiplier=mu
            )
            return jnp.sum(jnp.sin(y)), y

        (g, y) = jax.grad(loss, argnums=(0, 1), has_aux=True)(x, w)
        return y, *g

    whole = jax.jit(jax.vmap(run))(stack)
    monkeypatch.setattr(conv, "_CHUNK_ELEMENTS", 0)  # chunks of the input's size
    chunked_fn = jax.jit(jax.vmap(run))
    assert "while" in chunked_fn.lower(stack).as_text()  # the patches were built in chunks
    chunked = chunked_fn(stack)
    np.testing.assert_array_equal(bits(chunked[0]), bits(whole[0]))  # forward
    np.testing.assert_array_equal(bits(chunked[1]), bits(whole[1]))  # input gradient
    # Weight gradient: per-chunk partial sums, added in order: within float32 rounding.
    np.testing.assert_allclose(chunked[2], whole[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "strides,dilation,padding", [((1, 1), (1, 1), "SAME"), ((2, 1), (2, 2), [(2, 1), (0, 2)])]
)
def test_wide_channels_gather_path(strides, dilation, padding, rng):
    """From 64 channels the patches are one gather (below, strided slices): the
    same values, and the gradient flows back through the slices' transpose."""
    x = _short_mantissas(rng, (3, 9, 8, 64))
    w = _short_mantissas(rng, (3, 3, 64, 5))
    dims = ("NHWC", "HWIO", "NHWC")
    args = (strides, padding, None, dilation, dims)
    want = lax.conv_general_dilated(x, w, *args, precision=lax.Precision.HIGHEST)
    got = ax.conv_general_dilated(x, w, *args, multiplier=ax.truncated(10))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    mult = ax.mitchell(7)

    def loss(x, w, **kw):
        return jnp.sum(jnp.sin(ax.conv_general_dilated(x, w, *args, **kw)))

    gx, gw = jax.grad(loss, argnums=(0, 1))(
        x, w, multiplier=mult, input_grad_multiplier=None, weight_grad_multiplier=None
    )
    y = ax.conv_general_dilated(x, w, *args, multiplier=mult)
    _, exact_vjp = jax.vjp(
        lambda x, w: lax.conv_general_dilated(x, w, *args, precision=lax.Precision.HIGHEST), x, w
    )
    ex, ew = exact_vjp(jnp.cos(y))
    np.testing.assert_allclose(gx, ex, rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(gw, ew, rtol=2e-5, atol=2e-3)


# Implicit im2col: on the CPU, convolutions without groups read their patches
# from the padded input inside the kernel (approxjax_conv_gemm).

cpu_only = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="implicit im2col is the CPU kernel's"
)


def _np_patches(xp, kernel, strides, dilation):
    """NumPy im2col of a padded NHWC input: (N * OH * OW, KH * KW * C), taps
    major, channels minor (the kernel's order of k)."""
    n, h, w, c = xp.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    cols = [
        xp[:, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    return np.concatenate(cols, axis=-1).reshape(n * oh * ow, kh * kw * c), (n, oh, ow)


def _with_specials(rng, x):
    x = np.array(x)
    flat = x.reshape(-1)
    specials = np.array([np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-40, 0.0, -0.0], np.float32)
    at = rng.choice(flat.size, size=min(flat.size, 3 * specials.size), replace=False)
    flat[at] = np.resize(specials, at.size)
    return x


@cpu_only
@pytest.mark.parametrize(
    "shape,kernel,strides,dilation,padding",
    [
        ((2, 7, 8, 5), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),
        ((2, 9, 9, 1), (5, 5), (1, 1), (1, 1), ((0, 0), (0, 0))),
        ((1, 11, 10, 3), (3, 2), (2, 3), (2, 1), ((2, 0), (1, 2))),
        ((3, 14, 14, 64), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),  # 1764 rows: row tiles
        ((1, 4, 4, 520), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),  # K = 4680: two sum blocks
        ((2, 6, 5, 16), (1, 1), (1, 2), (1, 1), ((0, 0), (0, 0))),
    ],
)
@pytest.mark.parametrize("mult", [ax.mitchell(7), ax.truncated(5), ax.truncated(10)], ids=str)
def test_implicit_im2col_matches_sequential_reference(
    shape, kernel, strides, dilation, padding, mult, rng
):
    """Bit for bit the reference products summed in the kernels' order, over
    NumPy-built patches, with inf, NaN, huge, subnormal and zero operands."""
    x = _with_specials(rng, random_nonzero(rng, shape))
    w = _with_specials(rng, random_nonzero(rng, (*kernel, shape[-1], 6)))
    conv = jax.jit(
        partial(
            ax.conv_general_dilated,
            window_strides=strides,
            padding=padding,
            rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            multiplier=mult,
        )
    )
    assert "approxjax_conv_gemm" in conv.lower(x, w).as_text()  # patches read in place
    got = conv(x, w)
    xp = np.pad(x, [(0, 0), *padding, (0, 0)])
    a, (n, oh, ow) = _np_patches(xp, kernel, strides, dilation)
    want = ref.sequential_dot_general(a, w.reshape(-1, 6), (((1,), (0,)), ((), ())), mult.lut)
    # Bits, one NaN for all: which of two NaNs a float32 sum returns (inf - inf
    # against a NaN operand) is the hardware's choice, not the model's.
    got, want = np.asarray(got), want.reshape(n, oh, ow, 6)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(bits(np.nan_to_num(got)), bits(np.nan_to_num(want)))


@cpu_only
@pytest.mark.parametrize("mult", [ax.mitchell(7), ax.truncated(10)], ids=str)
def test_implicit_im2col_both_streams_and_weight_gradient(mult, rng):
    """Forward and weight gradient, with the patches streamed or tabled (the
    cost model's choice, both reached here) and tables or gathers: bit for
    bit the reference products summed in the kernels' order, specials included."""
    dims = ("NHWC", "HWIO", "NHWC")
    seen = set()
    for shape, kernel, strides, dilation, out in [
        ((2, 7, 8, 5), (3, 3), (1, 1), (1, 1), 6),
        ((1, 3, 3, 5), (3, 3), (1, 1), (1, 1), 70),  # 1 pixel, 70 outputs
        ((1, 11, 10, 3), (3, 2), (2, 3), (2, 1), 40),
        ((3, 9, 9, 1), (5, 5), (1, 1), (1, 1), 6),
        ((2, 6, 6, 20), (3, 3), (1, 1), (1, 1), 3),
    ]:
        for kind in ("auto", "tables", "gathers"):
            opts = ax.KernelOptions(gemm=kind)
            x = _with_specials(rng, random_nonzero(rng, shape))
            w = random_nonzero(rng, (*kernel, shape[-1], out))
            conv = partial(
                ax.conv_general_dilated,
                window_strides=strides,
                padding="VALID",
                rhs_dilation=dilation,
                dimension_numbers=dims,
                multiplier=mult,
                options=opts,
            )
            y, vjp = jax.vjp(lambda w, x=x, conv=conv: conv(x, w), w)
            g = random_nonzero(rng, y.shape)
            (dw,) = vjp(g)
            a, _ = _np_patches(x, kernel, strides, dilation)
            rows, depth = a.shape
            forward = plan((1, rows, depth), (1, depth, out), mult, options=opts, conv=True)
            weights = plan((1, rows, depth), (1, rows, out), mult, transpose=(True, False),
                           options=opts, conv=True)  # fmt: skip
            for which, layout in (("forward", forward), ("weights", weights)):
                assert "im2col" in layout, layout
                seen.add((which, layout.split(" stream=")[1][:3]))
            g2 = np.asarray(g).reshape(-1, out)
            for got, want in [
                (
                    y,
                    ref.sequential_dot_general(
                        a, w.reshape(-1, out), (((1,), (0,)), ((), ())), mult.lut
                    ),
                ),
                (dw, ref.sequential_dot_general(a, g2, (((0,), (0,)), ((), ())), mult.lut)),
            ]:
                got, want = np.asarray(got).reshape(want.shape), np.asarray(want)
                np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
                np.testing.assert_array_equal(bits(np.nan_to_num(got)), bits(np.nan_to_num(want)))
    assert seen == {(m, s) for m in ("forward", "weights") for s in ("lhs", "rhs")}, seen


@cpu_only
def test_implicit_weight_gradient_uses_its_own_multiplier(rng):
    x = random_nonzero(rng, (3, 6, 7, 4))
    w = random_nonzero(rng, (3, 3, 4, 5))
    own = ax.truncated(6)
    conv = partial(
        ax.conv_general_dilated,
        window_strides=(1, 1),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        multiplier=ax.mitchell(7),
        weight_grad_multiplier=own,
    )
    y, vjp = jax.vjp(conv, x, w)
    g = random_nonzero(rng, y.shape)
    _, dw = vjp(g)
    a, _ = _np_patches(x, (3, 3), (1, 1), (1, 1))
    want = ref.sequential_dot_general(a, g.reshape(-1, 5), (((0,), (0,)), ((), ())), own.lut)
    np.testing.assert_array_equal(bits(dw), bits(want.reshape(w.shape)))


@given(problem=conv_problems(), seed=st.integers(0, 2**31))
def test_implicit_im2col_equals_built_patches(problem, seed):
    """Forward and both gradients: the same bits whether the patches are read
    in place or built (KernelOptions(conv="patches")), every geometry."""
    if problem["feature_group_count"] > 1 or problem["batch_group_count"] > 1:
        return  # groups always build their patches
    rng = np.random.default_rng(seed)
    lhs = random_nonzero(rng, problem["lhs_shape"])
    rhs = random_nonzero(rng, problem["rhs_shape"])
    mult = ax.stack([ax.mitchell(7), ax.truncated(7)])

    def run(mode):
        opts = ax.KernelOptions(conv=mode)

        def loss(lhs, rhs, mu):
            y = ax.conv_general_dilated(*_args(problem, lhs, rhs), multiplier=mu, options=opts)
            return jnp.sum(jnp.sin(y)), y

        grad = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1), has_aux=True), (None, None, 0)))
        (gx, gw), y = grad(lhs, rhs, mult)
        return [bits(v) for v in (y, gx, gw)], grad.lower(lhs, rhs, mult).as_text()

    implicit, text = run("implicit")
    assert "approxjax_conv_gemm" in text or jax.default_backend() != "cpu"
    built, text = run("patches")
    assert "approxjax_conv_gemm" not in text
    for a, b in zip(implicit, built, strict=True):
        np.testing.assert_array_equal(a, b)


@cpu_only
def test_implicit_im2col_stack_is_one_call(rng):
    """A vmapped stack of multipliers: one conv GEMM in the program, each
    member's output as if it ran alone."""
    x = random_nonzero(rng, (2, 8, 8, 12))
    w = random_nonzero(rng, (3, 3, 12, 20))
    members = [ax.mitchell(7), ax.mbm(7), ax.truncated(7), ax.drum(6, 4)]
    stack = ax.stack(members[:3])

    def conv(x, w, mu):
        return ax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), multiplier=mu
        )

    fn = jax.jit(jax.vmap(conv, (None, None, 0)))
    assert fn.lower(x, w, stack).as_text().count("approxjax_conv_gemm") == 1
    got = fn(x, w, stack)
    for i, mu in enumerate(members[:3]):
        np.testing.assert_array_equal(bits(got[i]), bits(conv(x, w, mu)))


@cpu_only
def test_conv_gemm_rejects_bad_shapes(rng):
    """The internal call checks its arguments in Python, and the C++ handler
    checks them again: a bad call is an error that names the shapes, never a
    crash."""
    x = jnp.asarray(random_nonzero(rng, (1, 5, 5, 3)))
    mult = ax.mitchell(4)
    lut, facts = mult.lut, mult.facts
    w = jnp.asarray(random_nonzero(rng, (27, 4)))
    call = partial(_ffi.conv_gemm, kernel=(3, 3), dilation=(1, 1))
    with pytest.raises(ValueError, match=r"positive ints .* \(0, 1\)"):
        call(x, w, lut, facts, strides=(0, 1))
    with pytest.raises(ValueError, match=r"got x \(1, 5, 5, 3\) and w \(26, 4\)"):
        call(x, w[:26], lut, facts, strides=(1, 1))
    g = jnp.asarray(random_nonzero(rng, (1, 8, 4)))  # the weight gradient's g: 9 pixels
    with pytest.raises(ValueError, match=r"g \(N, P, O\) = \(1, 9, O\); got .* g \(1, 8, 4\)"):
        call(x, g, lut, facts, strides=(1, 1), transpose_lhs=True)
    # Past the Python checks, straight to the handler.
    for rhs, out, strides, transpose, want in [
        (w, (1, 8, 4), (1, 1), False, "inconsistent shapes: out must be"),
        (w, (1, 9, 4), (0, 1), False, "kernel, strides and dilation must be positive"),
        (w, (9, 4), (1, 1), False, "ranks must be"),
        (w, (27, 4), (1, 1), True, "ranks must be"),  # w where g (N, P, O) belongs
        (g, (27, 4), (1, 1), True, "inconsistent shapes: rhs must be"),  # 8 pixels, not 9
    ]:
        raw = jax.ffi.ffi_call(_ffi.CONV_GEMM_TARGET, jax.ShapeDtypeStruct(out, jnp.float32))
        i64 = partial(np.asarray, dtype=np.int64)
        with pytest.raises(Exception, match=f"approxjax_conv_gemm: {want}"):
            jax.block_until_ready(
                raw(
                    x,
                    rhs,
                    lut,
                    facts,
                    jnp.zeros((*lut.shape[:-2], 2), jnp.uint32),  # noise: none
                    options=ax.KernelOptions().attribute(),
                    arithmetic=ARITHMETIC_OFF.attribute(),
                    kernel=i64((3, 3)),
                    strides=i64(strides),
                    dilation=i64((1, 1)),
                    transpose_lhs=transpose,
                )
            )
