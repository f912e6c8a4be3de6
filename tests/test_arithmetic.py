"""approxjax.Arithmetic: operand formats, product rounding, accumulators and
adders in the GEMM kernels, bit for bit against the sequential reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import VARIANTS, bits, dot_problems, kernel_options, random_nonzero
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

import approxjax as ax
from approxjax import reference as ref

DN = (((1,), (0,)), ((), ()))

CASES = {
    "mitchell7 acc bf16": dict(multiplier=ax.mitchell(7), accumulator="bfloat16"),
    "mitchell7 acc fp16": dict(multiplier=ax.mitchell(7), accumulator="float16"),
    "truncated7 acc bf16": dict(multiplier=ax.truncated(7), accumulator="bfloat16"),
    "ieee e4m3 acc fp16": dict(lhs="e4m3", rhs="e4m3", accumulator="float16"),
    "ieee e5m2 x e4m3 acc e5m2": dict(lhs="e5m2", rhs="e4m3", accumulator="e5m2"),
    "mitchell5 acc tf32 rz": dict(
        multiplier=ax.mitchell(5), accumulator="tf32", accumulator_rounding="toward_zero"
    ),
    "mitchell5 acc bf16 ra": dict(
        multiplier=ax.mitchell(5), accumulator="bfloat16", accumulator_rounding="away_from_zero"
    ),
    "mitchell5 product bf16": dict(multiplier=ax.mitchell(5), product="bfloat16"),
    "mitchell3 e4m3 product e4m3 acc fp16": dict(
        multiplier=ax.mitchell(3), lhs="e4m3", rhs="e4m3", product="e4m3", accumulator="float16"
    ),
    "mitchell5 loa4": dict(multiplier=ax.mitchell(5), adder=ax.LOA(4)),
    "drum6 acc bf16 loa3": dict(multiplier=ax.drum(6), accumulator="bfloat16", adder=ax.LOA(3)),
    "mitchell5 acc bf16 sr": dict(
        multiplier=ax.mitchell(5),
        accumulator="bfloat16",
        accumulator_rounding="stochastic",
        key=jax.random.key(3),
    ),
    "ieee e4m3 sr operands": dict(
        lhs="e4m3", rhs="e4m3", operand_rounding="stochastic", key=jax.random.key(4)
    ),
    "ieee acc fp16": dict(accumulator="float16"),
    "ieee acc e4m3 (tiny range)": dict(accumulator="e4m3"),
}


def assert_matches_reference(got, lhs, rhs, dn, arith):
    """Bit for bit the sequential reference; where XLA's dot sums (IEEE
    products, float32 sums: only operand formats), within the float32
    accumulation bound of it (XLA's summation order is its own)."""
    with np.errstate(over="ignore", invalid="ignore"):
        want = ref.sequential_dot_general(lhs, rhs, dn, arith)
    got = np.asarray(got)
    same = (bits(got) == bits(want)) | (np.isnan(got) & np.isnan(want))
    if arith.multiplier is None and arith.spec.default_sums:
        k = int(np.prod([np.shape(lhs)[d] for d in dn[0][0]]))
        # Operands move by less than a factor 2 in any format: bound the products by 4x.
        scale = np.asarray(
            lax.dot_general(np.abs(lhs), np.abs(rhs), dn, precision=lax.Precision.HIGHEST),
            np.float64,
        )
        bound = ref.accumulation_bound(4 * scale, k)
        with np.errstate(invalid="ignore"):
            same |= np.abs(got.astype(np.float64) - want) <= bound
    assert same.all(), (arith.name, got[~same][:4], want[~same][:4])


def with_specials(x, w):
    """Infinity, NaN, float32 subnormals and values past FP8's range among random values."""
    x, w = x.copy(), w.copy()
    x[2, 3], x[4, 7], x[1, 1] = np.inf, 3e38, np.nan
    w[5, 1], w[6, 2] = 1e-40, 700.0
    return x, w


@pytest.mark.parametrize("shape", [(37, 50, 41), (9, 4200, 5)])  # 4200 > one 4096-block
@pytest.mark.parametrize("case", sorted(CASES))
def test_gemm_bit_exact_against_sequential_reference(case, shape, rng):
    mm, k, n = shape
    x, w = with_specials(random_nonzero(rng, (mm, k)), random_nonzero(rng, (k, n)))
    arith = ax.Arithmetic(**CASES[case])
    got = jax.jit(lambda a, b: ax.dot_general(a, b, DN, multiplier=arith))(x, w)
    assert_matches_reference(got, x, w, DN, arith)


@pytest.mark.parametrize(
    "acc,rounding",
    [
        ("bfloat16", "nearest_even"),
        ("float16", "nearest_even"),
        ("tf32", "nearest_even"),
        ("bfloat16", "toward_zero"),
        ("float16", "away_from_zero"),
    ],
)
@pytest.mark.parametrize("variant", VARIANTS)
def test_reduced_sums_at_the_edges_of_their_range(acc, rounding, variant, rng):
    """Sums that overflow the accumulator and sums that cancel into its
    subnormal range, from regular operands (the vectorised path, which
    checks no lane in these formats when nearest-even), bit for bit the
    reference: overflow gives inf, or the largest finite toward zero; in
    every kernel variant this CPU runs."""
    options = kernel_options(variant)
    big = {"bfloat16": 2.0**61, "float16": 2.0**5, "tf32": 2.0**61}[acc]  # products stay finite
    tiny = {"bfloat16": 2.0**-63, "float16": 2.0**-9, "tf32": 2.0**-63}[acc]
    k = 64
    x = random_nonzero(rng, (4, k)) + 2.0
    w = np.abs(random_nonzero(rng, (k, 16))) + 1.0
    x[:2] = np.abs(x[:2]) + 1.0
    x[0] *= big  # products of big operands: the sums overflow
    x[1] *= -big
    w[:, :8] *= big
    signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    x[2] = tiny * (1.0 + np.arange(k) % 3 / 64.0) * signs  # sums cancel to subnormals
    w[:, 8:] = tiny * (1.0 + rng.integers(0, 4, (k, 8)) / 128.0)
    x, w = x.astype(np.float32), w.astype(np.float32)
    for mult in (ax.mitchell(7), ax.truncated(7)):
        arith = ax.Arithmetic(multiplier=mult, accumulator=acc, accumulator_rounding=rounding)
        got = ax.dot_general(x, w, DN, multiplier=arith, options=options)
        assert_matches_reference(got, x, w, DN, arith)
    top = np.float32(ax.formats.get(acc).max)
    assert (np.abs(np.asarray(got)[:2, :8]) == (top if rounding == "toward_zero" else np.inf)).all()


@pytest.mark.parametrize("name", ["mitchell", "truncated"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_sums_that_cancel_into_subnormals_in_wide_blocks(name, variant, rng):
    """bfloat16 sums in blocks of 64 columns, which AVX-512 BF16 CPUs round
    two vectors per instruction (vcvtne2ps2bf16, which flushes subnormals:
    the plan narrows the regular range so that no sum is subnormal, and the
    operands beyond it take the scalar rule), of Mitchell products (8 bits:
    float32 sums rounded to nearest first) and truncated ones (16 bits, a
    separable table: rounded to odd first): products near 2**-124 whose sums
    cancel into the subnormal range, products at the narrowed range's edge,
    and ordinary ones, bit for bit the reference in every kernel variant."""
    options = kernel_options(variant)
    k, n = 96, 256
    x = random_nonzero(rng, (256, k)).astype(np.float32)
    w = random_nonzero(rng, (k, n)).astype(np.float32)
    signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    # Past the narrowed range (63 - 4 for Mitchell's 8-bit entries, 63 - 8
    # for truncated(7)'s 16-bit ones), at it, and just inside it.
    e = {"mitchell": 62, "truncated": 57}[name]
    for row, tiny in ((1, 2.0**-e), (2, 2.0 ** (1 - e)), (3, 2.0 ** (3 - e))):
        x[row] = tiny * (1.0 + np.arange(k) % 5 / 128.0) * signs
    quarters = (slice(n // 2, 3 * n // 4), slice(3 * n // 4, n))
    for cols, tiny in zip(quarters, (2.0**-e, 2.0 ** (1 - e)), strict=True):
        w[:, cols] = tiny * (1.0 + rng.integers(0, 4, (k, n // 4)) / 128.0)
    # Two products that cancel to -2**-127 (truncated(7)'s are exact: 128 *
    # 130, a bfloat16, minus 129 * 129), then zeros.
    x[4] = 0.0
    x[4, :2] = 2.0**-e * np.array([1.0, -129 / 128])
    w[:2, 3 * n // 4 :] = 2.0 ** (1 - e) * np.array([[130 / 128], [129 / 128]])
    x, w = x.astype(np.float32), w.astype(np.float32)
    arith = ax.Arithmetic(multiplier=getattr(ax, name)(7), accumulator="bfloat16")
    got = np.asarray(ax.dot_general(x, w, DN, multiplier=arith, options=options))
    assert_matches_reference(got, x, w, DN, arith)
    sub = (got != 0) & (np.abs(got) < np.finfo(np.float32).tiny)
    assert sub[1:5].any()  # the case in point: sums in the subnormal range


@pytest.mark.parametrize("operands", ["e7m1", "e7m2", "e5m2"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_sums_of_ieee_products_in_wide_blocks(operands, variant, rng):
    """IEEE products (no multiplier) with bfloat16 sums in blocks of 64
    columns: AVX-512 BF16 CPUs round them by pairs of vectors (flushing
    subnormals) only where the operand formats make every product a multiple
    of 2**-126, as e7m1's least quantum 2**-63 squared is and e7m2's 2**-64
    squared is not (its sums here fall in bfloat16's subnormal range).
    Products of the formats' subnormals whose sums cancel, inf and NaN
    operands (e5m2 keeps inf), and ordinary values, bit for bit the reference
    in every kernel variant."""
    options = kernel_options(variant)
    fmt = {"e7m1": ax.formats.Format(exponent_bits=7, mantissa_bits=1),
           "e7m2": ax.formats.Format(exponent_bits=7, mantissa_bits=2),
           "e5m2": ax.formats.get("e5m2")}[operands]  # fmt: skip
    least = fmt.smallest_subnormal
    k, n = 96, 256
    x = random_nonzero(rng, (128, k)).astype(np.float32)
    w = random_nonzero(rng, (k, n)).astype(np.float32)
    signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    # Multiples of the least quantum (subnormals of the format): products of
    # quantum**2 times small integers, whose alternating sums cancel.
    x[1:4] = least * (1 + np.arange(3 * k).reshape(3, k) % 3) * signs
    w[:, n // 2 :] = least * (1 + rng.integers(0, 3, (k, n // 2)))
    x[5, 7], x[6, 8], w[9, 3] = np.inf, np.nan, -np.inf
    arith = ax.Arithmetic(lhs=fmt, rhs=fmt, accumulator="bfloat16")
    got = np.asarray(ax.dot_general(x, w, DN, multiplier=arith, options=options))
    assert_matches_reference(got, x, w, DN, arith)
    if operands == "e7m2":  # the case in point: sums in the subnormal range
        sub = (got != 0) & (np.abs(got) < np.finfo(np.float32).tiny)
        assert sub[1:4].any()


@pytest.mark.parametrize(
    "acc,bits,rounding",
    [
        ("float32", 8, "nearest_even"),
        ("float32", 20, "nearest_even"),
        ("bfloat16", 3, "away_from_zero"),
        ("float16", 4, "nearest_even"),
    ],
)
@pytest.mark.parametrize("variant", VARIANTS)
def test_loa_sums_vectorised_bit_for_bit(acc, bits, rounding, variant, rng):
    """The lower-part-OR adder in the vector sweep (LoaLanes) against the
    scalar reference: mixed signs and exact cancellations, carries into the
    next binade, zero products, operands a few and 80 binades apart, sums near
    float16's largest finite and below its least normal, and products whose
    quantum falls below float32's normal range (those lanes take the scalar
    rule), in wide and narrow blocks and every kernel variant."""
    options = kernel_options(variant)
    k = 40
    x = random_nonzero(rng, (8, k))
    w = random_nonzero(rng, (k, 80))
    x[1] = np.where(np.arange(k) % 2 == 0, 1.5, -1.5)  # cancels to exact zeros
    w[:, 1] = 1.0
    x[2] = 1.0 - 2.0**-6  # the sums carry across binades
    x[3, ::3] = 0.0  # zero products
    x[4] *= 2.0 ** rng.integers(-12, 12, k)
    x[7] *= np.where(np.arange(k) % 2 == 0, 2.0**40, 2.0**-40)  # aligned to nothing
    big = {"float16": 2.0**6, "bfloat16": 2.0**60, "float32": 2.0**60}[acc]
    tiny = {"float16": 2.0**-9, "bfloat16": 2.0**-62, "float32": 2.0**-60}[acc]
    x[5] *= big
    # tiny x tiny (regular operands): the quantum or the sum below the normal range
    x[6] = tiny * (1.0 + rng.random(k)) * rng.choice([-1.0, 1.0], k)
    w[:, 2] = tiny * (1.0 + rng.random(k))
    x, w = x.astype(np.float32), w.astype(np.float32)
    arith = ax.Arithmetic(
        multiplier=ax.mitchell(7),
        accumulator=acc,
        accumulator_rounding=rounding,
        adder=ax.LOA(bits),
    )
    for cols in (80, 16):
        got = ax.dot_general(x, w[:, :cols], DN, multiplier=arith, options=options)
        assert_matches_reference(got, x, w[:, :cols], DN, arith)


@pytest.mark.parametrize(
    "mbits,kwargs",
    [
        (7, dict(multiplier=ax.truncated(7), accumulator="bfloat16")),
        (5, dict(multiplier=ax.truncated(5), accumulator="float16")),
        (7, dict(lhs="bfloat16", rhs="bfloat16", accumulator="bfloat16")),
        (10, dict(lhs="float16", rhs="float16", accumulator="float16")),
    ],
    ids=["truncated7-bf16", "truncated5-fp16", "ieee-bf16", "ieee-fp16"],
)
@pytest.mark.parametrize("variant", VARIANTS)
def test_sums_of_wider_products_are_rounded_once(mbits, kwargs, variant):
    """Products with more significant bits than the accumulator (of two
    operands of m fraction bits, as truncated(m) forms or IEEE products of
    m-bit formats: 2m + 2) where the float32 sum rounded to nearest lands on
    a midpoint of the format and a second rounding would go the wrong way:
    the kernels round the exact sum to odd first (products of at most the
    format's precision need not: Accumulator::NearestSumsExact)."""
    options = kernel_options(variant)
    acc = kwargs["accumulator"]
    p = ax.formats.get(acc).mantissa_bits + 1
    size = 2**mbits
    sig = 1.0 + np.arange(size) / size
    prod = np.multiply.outer(sig, sig)
    norm = prod / 2.0 ** np.floor(np.log2(prod))
    scaled = norm * 2.0 ** (p - 1)
    # A tie P in [2, 4) at p bits whose lower neighbour is even: float32
    # rounds P + 2**-24 (the first sum, exact in the accumulator) to P, and
    # nearest-even would then round P down.
    tie = (scaled - np.floor(scaled) == 0.5) & (np.floor(scaled) % 2 == 0) & (prod >= 2)
    i, j = np.argwhere(tie)[0]
    x = np.array([[2.0**-24, sig[i]]], np.float32)
    w = np.array([[1.0], [sig[j]]], np.float32)
    arith = ax.Arithmetic(**kwargs)
    got = np.asarray(ax.dot_general(x, w, DN, multiplier=arith, options=options))[0, 0]
    exact = np.float64(2.0**-24) + prod[i, j]
    want = ax.formats.convert(np.float32(prod[i, j]), acc, rounding="away_from_zero")
    assert got == want and got > exact > prod[i, j], (got, exact, want)
    assert_matches_reference(got[None, None], x, w, DN, arith)


ROUNDINGS = ["nearest_even", "toward_zero", "away_from_zero"]


@st.composite
def arithmetics(draw):
    fmt = st.sampled_from([None, "e4m3", "e5m2", "bfloat16", "float16", "e3m4", "e2m1"])
    mult = draw(st.sampled_from([None, ax.mitchell(4), ax.truncated(6), ax.drum(5)]))
    return ax.Arithmetic(
        multiplier=mult,
        lhs=draw(fmt),
        rhs=draw(fmt),
        operand_rounding=draw(st.sampled_from(ROUNDINGS)),
        product=draw(fmt),
        product_rounding=draw(st.sampled_from(ROUNDINGS)),
        accumulator=draw(fmt),
        accumulator_rounding=draw(st.sampled_from(ROUNDINGS)),
        adder=draw(st.sampled_from([None, None, ax.LOA(2)])),
    )


@pytest.mark.filterwarnings("ignore:.*indexes .* mantissa bits:UserWarning")
@given(problem=dot_problems(), arith=arithmetics(), seed=st.integers(0, 2**31))
def test_any_arithmetic_any_dimension_numbers(problem, arith, seed):
    lhs_shape, rhs_shape, dn = problem
    rng = np.random.default_rng(seed)
    lhs = random_nonzero(rng, lhs_shape, scale=4.0)
    rhs = random_nonzero(rng, rhs_shape, scale=4.0)
    got = ax.dot_general(lhs, rhs, dn, multiplier=arith)
    assert got.shape == lax.dot_general(lhs, rhs, dn).shape
    assert_matches_reference(got, lhs, rhs, dn, arith)


def test_float32_everything_is_todays_kernel(rng):
    x, w = random_nonzero(rng, (64, 300)), random_nonzero(rng, (300, 48))
    mult = ax.mitchell(7)
    plain = ax.dot_general(x, w, DN, multiplier=mult)
    spelled = ax.Arithmetic(
        multiplier=mult, lhs="float32", rhs="fp32", product=None, accumulator="float32"
    )
    np.testing.assert_array_equal(bits(ax.dot_general(x, w, DN, multiplier=spelled)), bits(plain))
    # No multiplier: IEEE products, float32 sums, XLA's own dot.
    exact = lax.dot_general(x, w, DN, precision=lax.Precision.HIGHEST)
    np.testing.assert_array_equal(
        bits(ax.dot_general(x, w, DN, multiplier=ax.Arithmetic())), bits(exact)
    )


def test_gradients_run_each_gemm_under_its_arithmetic(rng):
    """dx = g @ w^T and dw = x^T @ g go through the same arithmetic (their own
    operand roles), bit for bit."""
    x, w = random_nonzero(rng, (12, 40)), random_nonzero(rng, (40, 9))
    g = random_nonzero(rng, (12, 9))
    arith = ax.Arithmetic(multiplier=ax.mitchell(2), lhs="e4m3", rhs="e5m2", accumulator="bfloat16")
    _, vjp = jax.vjp(lambda a, b: ax.dot_general(a, b, DN, multiplier=arith), x, w)
    dx, dw = jax.jit(vjp)(g)
    np.testing.assert_array_equal(bits(dx), bits(ref.sequential_dot_general(g, w.T, DN, arith)))
    np.testing.assert_array_equal(bits(dw), bits(ref.sequential_dot_general(x.T, g, DN, arith)))


def test_vmap_over_a_stack_of_arithmetics(rng):
    x, w = random_nonzero(rng, (16, 70)), random_nonzero(rng, (70, 8))
    items = [
        ax.Arithmetic(multiplier=m, lhs="e4m3", rhs="e4m3", accumulator="float16")
        for m in (ax.mitchell(3), ax.truncated(3), ax.drum(3))
    ]
    stacked = ax.stack(items)
    swept = jax.jit(jax.vmap(lambda a: ax.dot_general(x, w, DN, multiplier=a)))(stacked)
    for got, a in zip(swept, items, strict=True):
        np.testing.assert_array_equal(bits(got), bits(ax.dot_general(x, w, DN, multiplier=a)))
    with pytest.raises(ValueError, match="must share formats"):
        ax.stack([items[0], items[1].replace(accumulator="bfloat16")])


@pytest.mark.parametrize("variant", VARIANTS)
def test_formats_of_23_fraction_bits_round_nothing_in_range(variant, rng):
    """A product format with float32's 23 fraction bits (and fewer exponent
    bits) leaves an odd float32 product as it is, in the vectorised path
    (its nearest-even rule once added the last bit instead)."""
    x = (1 + rng.integers(1, 1 << 20, (6, 30)) * 2.0**-23).astype(np.float32)
    w = np.ones((30, 17), np.float32)
    arith = ax.Arithmetic(product="e7m23", accumulator="e8m21")
    got = ax.dot_general(x, w, DN, multiplier=arith, options=kernel_options(variant))
    assert_matches_reference(got, x, w, DN, arith)


@pytest.mark.filterwarnings("ignore:.*indexes .* mantissa bits:UserWarning")
def test_narrow_operands_sweep_a_subsampled_table(rng):
    """Operand formats narrower than the table (both): the GEMMs sweep every
    2**(m - bits)-th row and column. The same bits as the full table, whether
    the multiplier is concrete, a jit argument or a vmapped stack; the native
    path uses the factors' same columns."""
    from approxjax._src.ops.gemm import split

    x, w = random_nonzero(rng, (20, 90), scale=4.0), random_nonzero(rng, (90, 11), scale=4.0)
    x[0, 0], w[1, 1] = 1e-6, np.inf  # an E4M3 subnormal; inf
    arith = ax.Arithmetic(multiplier=ax.mitchell(7), lhs="e4m3", rhs="e5m2", accumulator="bfloat16")
    assert split(arith)[0].mantissa_bits == 3
    assert split(arith.replace(rhs="bfloat16"))[0].mantissa_bits == 7
    assert split(arith.replace(rhs=None))[0].mantissa_bits == 7
    got = ax.dot_general(x, w, DN, multiplier=arith)
    assert_matches_reference(got, x, w, DN, arith)
    traced = jax.jit(lambda a: ax.dot_general(x, w, DN, multiplier=a))(arith)
    np.testing.assert_array_equal(bits(traced), bits(got))
    items = [arith.replace(multiplier=m) for m in (ax.mitchell(7), ax.truncated(7), ax.drum(7))]
    swept = jax.jit(jax.vmap(lambda a: ax.dot_general(x, w, DN, multiplier=a)))(ax.stack(items))
    for out, a in zip(swept, items, strict=True):
        assert_matches_reference(out, x, w, DN, a)
    low_rank = ax.Arithmetic(multiplier=ax.lowblock(7, 3), lhs="e4m3", rhs="e4m3")
    x = random_nonzero(rng, (20, 90), scale=4.0)
    native = ax.dot_general(x, w[:, 2:], DN, multiplier=low_rank, method="native")
    by_table = ax.dot_general(x, w[:, 2:], DN, multiplier=low_rank, method="lut")
    np.testing.assert_allclose(native, by_table, rtol=1e-4, atol=1e-3)


def test_stochastic_rounding_is_keyed_per_gemm_and_unbiased(rng):
    x, w = random_nonzero(rng, (8, 512)), random_nonzero(rng, (512, 8))
    sr = ax.Arithmetic(
        accumulator="bfloat16", accumulator_rounding="stochastic", key=jax.random.key(0)
    )

    def run(key):
        return np.asarray(ax.dot_general(x, w, DN, multiplier=sr.replace(key=key)))

    a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    np.testing.assert_array_equal(bits(a), bits(b))
    assert not np.array_equal(a, c)
    # Over many keys, the mean error is far below round-to-nearest's bias.
    exact = x.astype(np.float64) @ w
    runs = np.stack([run(jax.random.key(i)) for i in range(64)])
    nearest = np.asarray(ax.dot_general(x, w, DN, multiplier=ax.Arithmetic(accumulator="bfloat16")))
    sr_bias = np.abs(runs.mean(0) - exact).mean()
    rn_err = np.abs(nearest - exact).mean()
    assert sr_bias < 0.5 * rn_err, (sr_bias, rn_err)


def test_stochastic_noise_differs_between_operations_and_gradients(rng):
    """approximate() folds each operation's index into the key, and each GEMM
    of an operation folds its role: two identical layers round differently."""
    x, w = random_nonzero(rng, (4, 256)), random_nonzero(rng, (256, 256))
    sr = ax.Arithmetic(
        accumulator="bfloat16", accumulator_rounding="stochastic", key=jax.random.key(0)
    )

    def two_layers(x, w):
        return jnp.dot(x, w), jnp.dot(x, w)

    first, second = ax.approximate(two_layers, sr)(x, w)
    assert not np.array_equal(first, second)
    # Forward and input gradient of one square product: different noise.
    y, vjp = jax.vjp(lambda a: ax.dot_general(a, w, DN, multiplier=sr), x)
    (dx,) = vjp(x)
    fwd_again = ax.dot_general(x, w.T, DN, multiplier=sr)
    assert not np.array_equal(dx, fwd_again)


def test_modules_and_policies_take_an_arithmetic(rng):
    import flax.linen as nn

    fp8 = ax.Arithmetic(multiplier=ax.mitchell(3), lhs="e4m3", rhs="e4m3", accumulator="float16")
    x = random_nonzero(rng, (5, 24))
    dense = ax.Dense(7, multiplier=fp8)
    params = dense.init(jax.random.key(0), x)
    got = dense.apply(params, x)
    k = params["params"]["kernel"]
    want = ref.sequential_dot_general(x, k, DN, fp8) + params["params"]["bias"]
    np.testing.assert_array_equal(bits(got), bits(want))
    plain = nn.Dense(7)

    @jax.jit
    def forward(params, x, arith):
        with ax.using(ax.Policy(arith)):
            return ax.Dense(7).apply(params, x)

    np.testing.assert_array_equal(bits(forward(params, x, fp8)), bits(got))
    np.testing.assert_array_equal(bits(ax.approximate(plain.apply, fp8)(params, x)), bits(got))


def test_convolution_under_an_arithmetic(rng):
    """The patches' products under the arithmetic, summed in the kernel's
    order (kernel row, column, then input channel), bit for bit."""
    x = random_nonzero(rng, (2, 7, 7, 3))
    w = random_nonzero(rng, (3, 3, 3, 4))
    arith = ax.Arithmetic(multiplier=ax.mitchell(3), lhs="e4m3", rhs="e4m3", accumulator="bfloat16")
    dn = ("NHWC", "HWIO", "NHWC")
    got = ax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=dn, multiplier=arith)
    patches = lax.conv_general_dilated_patches(
        x, (3, 3), (1, 1), "VALID", dimension_numbers=dn, precision=lax.Precision.HIGHEST
    )  # (N, H, W, C * kh * kw), channel-major
    patches = np.asarray(patches).reshape(-1, 3, 3, 3).transpose(0, 2, 3, 1).reshape(-1, 27)
    want = ref.sequential_dot_general(patches, w.reshape(27, 4), DN, arith)
    np.testing.assert_array_equal(bits(np.asarray(got).reshape(-1, 4)), bits(want))


def test_c_adder_runs_in_the_kernel(tmp_path, monkeypatch, rng):
    monkeypatch.setenv("APPROXJAX_CACHE_DIR", str(tmp_path))
    exact = ax.adder_from_c("float add(float a, float b) { return a + b; }", "add")
    x, w = random_nonzero(rng, (6, 300)), random_nonzero(rng, (300, 5))
    mult = ax.mitchell(6)
    plain = np.asarray(ax.dot_general(x, w, DN, multiplier=mult))
    with_c = ax.dot_general(x, w, DN, multiplier=ax.Arithmetic(multiplier=mult, adder=exact))
    np.testing.assert_array_equal(bits(with_c), bits(plain))
    # An adder that truncates its sum to 10 fraction bits: as the reference calls it.
    trunc = ax.adder_from_c(
        """
        #include <string.h>
        float add_trunc(float a, float b) {
          float s = a + b; unsigned u; memcpy(&u, &s, 4); u &= ~0x1FFFu; memcpy(&s, &u, 4);
          return s;
        }""",
        "add_trunc",
    )
    arith = ax.Arithmetic(multiplier=mult, adder=trunc)
    got = ax.dot_general(x, w, DN, multiplier=arith)
    np.testing.assert_array_equal(bits(got), bits(ref.sequential_dot_general(x, w, DN, arith)))
    assert not np.array_equal(got, plain)


def test_c_adder_that_crashes_is_caught_before_the_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv("APPROXJAX_CACHE_DIR", str(tmp_path))
    source = """
    #include <math.h>
    #include <stdlib.h>
    float add(float a, float b) { if (isnan(b)) abort(); return a + b; }
    """
    with pytest.raises(ax.CModelError, match=r"C model add crashed \(SIGABRT\) at the operands"):
        ax.adder_from_c(source, "add")
    with pytest.raises(ax.CModelError, match="no function 'plus'"):
        ax.adder_from_c("float add(float a, float b) { return a + b; }", "plus")


def test_fp8_warns_of_unused_table_bits():
    with pytest.warns(UserWarning, match=r"mitchell7 indexes 7 mantissa bits but the lhs .* e4m3"):
        ax.Arithmetic(multiplier=ax.mitchell(7), lhs="e4m3")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(accumulator="e9m3"),
            ValueError,
            r"accumulator: exponent_bits must be in \[1, 8\]; got 9",
        ),
        (dict(lhs="fp9"), ValueError, "lhs: unknown format 'fp9'"),
        (dict(accumulator_rounding="round"), ValueError, "rounding must be one of .* got 'round'"),
        (dict(accumulator="bfloat16", accumulator_rounding="stochastic"), ValueError, "needs key="),
        (dict(multiplier="mitchell7"), TypeError, "takes a Multiplier or None; got 'mitchell7'"),
        (dict(adder=3), TypeError, r"adder must be approxjax.LOA\(...\)"),
    ],
)
def test_bad_arithmetic_is_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        ax.Arithmetic(**kwargs)


def test_bad_adders_and_positional_use():
    with pytest.raises(ValueError, match=r"LOA needs 1 <= bits <= 23; got 0"):
        ax.LOA(0)
    with pytest.raises(TypeError):
        ax.Arithmetic(ax.mitchell(4))  # keyword-only
    with pytest.raises(TypeError, match="a Multiplier, an Arithmetic, None"):
        ax.dot_general(
            np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), DN, multiplier="bf16"
        )
