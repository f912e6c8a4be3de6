"""approxjax.dot_general against the reference on random shapes and dimension numbers."""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import bits, dot_problems, plan, random_nonzero
from hypothesis import given
from hypothesis import strategies as st
from jax import lax

import approxjax as ax
from approxjax import reference as ref


@given(problem=dot_problems(), m=st.sampled_from([0, 1, 4, 7, 9, 10]), seed=st.integers(0, 2**31))
def test_against_reference(problem, m, seed):
    lhs_shape, rhs_shape, dn = problem
    rng = np.random.default_rng(seed)
    lhs = random_nonzero(rng, lhs_shape)
    rhs = random_nonzero(rng, rhs_shape)
    mult = ax.truncated(m)
    got = np.asarray(ax.dot_general(lhs, rhs, dn, multiplier=mult))
    want = np.asarray(ref.dot_general(lhs, rhs, dn, mult.lut))
    assert got.shape == want.shape == lax.dot_general(lhs, rhs, dn).shape
    bound = ref.dot_general_bound(lhs, rhs, dn, mult.lut)
    assert np.all(np.abs(got.astype(np.float64) - want) <= bound), (got, want, bound)
    # The kernels add products in order of k: bit for bit that order.
    np.testing.assert_array_equal(
        bits(got), bits(ref.sequential_dot_general(lhs, rhs, dn, mult.lut))
    )


@pytest.mark.parametrize(
    "shape", [(300, 200, 500), (517, 64, 130), (1, 700, 3), (129, 1, 257), (64, 3000, 65)]
)
@pytest.mark.parametrize("m", [2, 7, 8, 10])
def test_large_gemms_bit_exact_in_k_order(shape, m, rng):
    """Several blocks, threads, both operand roles, table and gather paths."""
    mm, k, n = shape
    lhs = random_nonzero(rng, (mm, k))
    rhs = random_nonzero(rng, (k, n))
    mult = ax.truncated(m)
    dn = (((1,), (0,)), ((), ()))
    got = np.asarray(jax.jit(lambda a, b: ax.dot_general(a, b, dn, multiplier=mult))(lhs, rhs))
    want = ref.sequential_dot_general(lhs, rhs, dn, mult.lut)
    np.testing.assert_array_equal(bits(got), bits(want))


def test_irregular_operands_in_a_large_gemm(rng):
    """inf, NaN, zeros, subnormals and extreme exponents inside big GEMMs."""
    lhs = random_nonzero(rng, (150, 90))
    rhs = random_nonzero(rng, (90, 170))
    lhs[3, 5], lhs[7, 0], lhs[9, 9] = np.inf, np.nan, 2.0**100
    lhs[10, :] = 0.0
    lhs[11, 4] = 1e-41
    rhs[2, 8], rhs[6, 33], rhs[40, 100] = -np.inf, 2.0**-110, 3e38
    rhs[:, 150] = -0.0
    for mult in (ax.truncated(7), ax.truncated(10)):
        dn = (((1,), (0,)), ((), ()))
        got = ax.dot_general(lhs, rhs, dn, multiplier=mult)
        want = ref.sequential_dot_general(lhs, rhs, dn, mult.lut)
        np.testing.assert_array_equal(bits(got), bits(want))


def test_exact_multiplier_matches_lax(rng):
    lhs = random_nonzero(rng, (4, 30, 20))
    rhs = random_nonzero(rng, (4, 20, 10))
    dn = (((2,), (1,)), ((0,), (0,)))
    got = ax.dot_general(lhs, rhs, dn, multiplier=None)
    np.testing.assert_array_equal(got, lax.dot_general(lhs, rhs, dn))


def test_exact_table_equals_lax_on_short_mantissas(rng):
    """Operands with <= m fraction bits multiply exactly under truncated(m)."""
    m = 10
    lhs = np.round(rng.uniform(-4, 4, (33, 47)) * 256) / 256
    rhs = np.round(rng.uniform(-4, 4, (47, 21)) * 256) / 256
    lhs, rhs = lhs.astype(np.float32), rhs.astype(np.float32)
    dn = (((1,), (0,)), ((), ()))
    got = np.asarray(ax.dot_general(lhs, rhs, dn, multiplier=ax.truncated(m)))
    want = np.asarray(lax.dot_general(lhs, rhs, dn, precision=lax.Precision.HIGHEST))
    bound = ref.accumulation_bound(np.abs(lhs) @ np.abs(rhs), 47)
    assert np.all(np.abs(got.astype(np.float64) - want) <= bound)


def test_dtypes_and_preferred_element_type(rng):
    lhs = jnp.asarray(random_nonzero(rng, (8, 16)), jnp.bfloat16)
    rhs = jnp.asarray(random_nonzero(rng, (16, 4)), jnp.bfloat16)
    mult = ax.truncated(7)
    dn = (((1,), (0,)), ((), ()))
    out = ax.dot_general(lhs, rhs, dn, multiplier=mult)
    assert out.dtype == jnp.bfloat16
    out32 = ax.dot_general(lhs, rhs, dn, multiplier=mult, preferred_element_type=jnp.float32)
    assert out32.dtype == jnp.float32
    want = ref.sequential_dot_general(
        lhs.astype(jnp.float32), rhs.astype(jnp.float32), dn, mult.lut
    )
    np.testing.assert_array_equal(bits(out32), bits(want))
    np.testing.assert_array_equal(
        np.asarray(out, np.float32), np.asarray(jnp.asarray(want).astype(jnp.bfloat16), np.float32)
    )
    half = ax.dot_general(lhs.astype(jnp.float16), rhs, dn, multiplier=mult)
    assert half.dtype == jnp.result_type(jnp.float16, jnp.bfloat16)


def test_empty_contraction_and_empty_output(rng):
    mult = ax.truncated(3)
    dn = (((1,), (0,)), ((), ()))
    out = ax.dot_general(
        np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), dn, multiplier=mult
    )
    np.testing.assert_array_equal(bits(out), bits(np.zeros((3, 4), np.float32)))
    assert ax.dot_general(
        np.ones((0, 5), np.float32), np.ones((5, 2), np.float32), dn, multiplier=mult
    ).shape == (0, 2)


def test_precision_is_accepted(rng):
    lhs = random_nonzero(rng, (5, 6))
    rhs = random_nonzero(rng, (6, 7))
    dn = (((1,), (0,)), ((), ()))
    mult = ax.truncated(7)
    a = ax.dot_general(lhs, rhs, dn, precision=lax.Precision.HIGHEST, multiplier=mult)
    b = ax.dot_general(lhs, rhs, dn, multiplier=mult)
    np.testing.assert_array_equal(bits(a), bits(b))


def _variant_digest(variant):
    """A hash of the bits of GEMMs that take every kernel path, under ``variant``."""
    rng = np.random.default_rng(5)
    out = []
    cases = [((130, 70, 90), 7), ((40, 300, 200), 3), ((70, 50, 66), 10), ((25, 3000, 6), 7)]
    cases += [((1100, 60, 100), 7)]  # with mitchell: compact tables
    cases += [((60, 80, 70), 12)]  # separable after rounding
    for separable in (True, False):  # truncated(m): the FMA path, then tables
        opts = ax.KernelOptions(variant=variant, separable=separable)
        for i, ((mm, k, n), m) in enumerate(cases):  # the 4th gathers its products
            a = rng.standard_normal((mm, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            a[3, 3] = np.inf
            mult = ax.mitchell(m) if i == 4 else ax.truncated(m)
            y = ax.dot_general(a, b, (((1,), (0,)), ((), ())), multiplier=mult, options=opts)
            out.append(np.asarray(y).tobytes())
    # Reduced accumulators: compact tables, separable products, IEEE products.
    opts = ax.KernelOptions(variant=variant)
    for arith in [
        ax.Arithmetic(multiplier=ax.mitchell(7), accumulator="bfloat16"),
        ax.Arithmetic(multiplier=ax.truncated(7), accumulator="float16"),
        ax.Arithmetic(lhs="e4m3", rhs="e4m3", accumulator="float16"),
    ]:
        a = rng.standard_normal((140, 300)).astype(np.float32)
        b = rng.standard_normal((300, 70)).astype(np.float32)
        a[3, 3] = np.inf
        y = ax.dot_general(a, b, (((1,), (0,)), ((), ())), multiplier=arith, options=opts)
        out.append(np.asarray(y).tobytes())
    return hashlib.sha256(b"".join(out)).hexdigest()


@pytest.mark.parametrize("variant", ["avx2", "avx512"])
def test_every_cpu_kernel_variant_gives_the_same_bits(variant):
    """Each instruction-set variant this CPU runs gives the baseline's bits
    (a variant it lacks is skipped, not compared with the baseline)."""
    flags = {
        "avx2": ("avx2", "fma", "f16c"),
        "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw"),
    }
    if not all(_cpu_flag(f) for f in flags[variant]):
        pytest.skip(f"this CPU has no {variant}")
    assert _variant_digest(variant) == _variant_digest("baseline")


def test_a_variant_the_cpu_lacks_is_an_error_not_a_crash():
    if _cpu_flag("avx512f"):
        pytest.skip("this CPU has AVX-512")
    a = np.ones((4, 4), np.float32)
    opts = ax.KernelOptions(variant="avx512")
    with pytest.raises(Exception, match="kernel variant 3 .* is not available on this CPU"):
        dn = (((1,), (0,)), ((), ()))
        jax.block_until_ready(ax.dot_general(a, a, dn, multiplier=ax.mitchell(7), options=opts))


@pytest.mark.parametrize(
    "batch,shape",
    [(1, (5, 9000, 3)), (1, (150, 8200, 16)), (16, (8, 4200, 8)), (2, (40, 4097, 70))],
)
def test_long_contractions_sum_in_blocks(batch, shape, rng):
    """Beyond ref.SUM_BLOCK products the kernels sum fixed blocks, then add the
    block sums in order: the same bits whether the blocks ran on one thread or
    several (small outputs split them across threads)."""
    mm, k, n = shape
    lhs = random_nonzero(rng, (batch, mm, k))
    rhs = random_nonzero(rng, (batch, k, n))
    lhs[0, 1 % mm, k - 3] = np.inf  # an irregular row: recomputed by the scalar rule
    dn = (((2,), (1,)), ((0,), (0,)))
    mult = ax.mitchell(7)
    got = np.asarray(jax.jit(lambda a, b: ax.dot_general(a, b, dn, multiplier=mult))(lhs, rhs))
    if (batch, shape) == (1, (150, 8200, 16)):
        # one output tile for two threads: its three blocks run as separate units
        assert "split=3" in plan((1, mm, k), (1, k, n), mult, threads=2)
        assert "split=1" in plan((1, mm, k), (1, k, n), mult, threads=1)
    want = ref.sequential_dot_general(lhs, rhs, dn, mult.lut)
    np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize("shape", [(16, 200, 3000), (3000, 200, 16), (70, 90, 1100)])
def test_irregular_operands_in_either_operand_role(shape, rng):
    """The kernel streams whichever operand its cost model picks (wide outputs
    stream the rhs); rows and columns holding inf, NaN or extreme exponents are
    recomputed by the scalar rule in both roles."""
    mm, k, n = shape
    lhs = random_nonzero(rng, (mm, k))
    rhs = random_nonzero(rng, (k, n))
    lhs[mm // 2, 7] = np.inf
    lhs[mm - 1, k - 1] = 3e38
    rhs[5, n // 3] = np.nan
    rhs[k // 2, n - 1] = -1e-39
    mult, dn = ax.mbm(7), (((1,), (0,)), ((), ()))
    got = np.asarray(ax.dot_general(lhs, rhs, dn, multiplier=mult))
    np.testing.assert_array_equal(
        bits(got), bits(ref.sequential_dot_general(lhs, rhs, dn, mult.lut))
    )


@pytest.mark.parametrize("streamed", ["lhs", "rhs"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("special", [np.inf, np.nan, 3.0e38, 1.0e-40, 0.0])
def test_packing_lanes_and_slices_match_the_reference(streamed, transpose, special, rng):
    """The streamed operand (the one with many rows or columns) is packed a
    vector of k at a time, in slices of 128 k: special elements in the first,
    last and tail lanes of vectors and slices route only their own outputs
    through the scalar rule. Contiguous and transposed storage both."""
    k = 300
    mm, n = (150, 20) if streamed == "lhs" else (20, 150)
    lhs = random_nonzero(rng, (mm, k))
    rhs = random_nonzero(rng, (k, n))
    # (row, k): first, last and tail lanes of row vectors and of k vectors
    places = [(0, 0), (15, 15), (16, 16), (31, 127), (100, 128), (143, 255), (148, 256)]
    places += [(149, 299)]
    for i, kk in places:
        if streamed == "lhs":
            lhs[i, kk] = special
        else:
            rhs[kk, i] = special
    lhs[9, 40] = rhs[41, 9] = special  # and in the tabled operand:
    if streamed == "lhs":  # the last lane of its partial column block
        rhs[200, n - 1] = special
    else:
        lhs[mm - 1, 200] = special
    dn = (((1,), (0,)), ((), ()))
    if transpose:  # stored [K, M] and [N, K]
        lhs, rhs = np.ascontiguousarray(lhs.T), np.ascontiguousarray(rhs.T)
        dn = (((0,), (1,)), ((), ()))
    mult = ax.mitchell(7)
    got = np.asarray(ax.dot_general(lhs, rhs, dn, multiplier=mult))
    want = ref.sequential_dot_general(lhs, rhs, dn, mult.lut)
    np.testing.assert_array_equal(bits(got), bits(want))


@pytest.mark.parametrize("path", ["tables", "gathers"])
@pytest.mark.parametrize(
    "shape,m",
    [
        ((25, 700, 6), 7),
        ((6, 900, 25), 7),
        ((40, 300, 33), 3),
        ((9, 260, 20), 8),
        ((7, 50, 19), 10),
    ],
)
def test_table_and_gather_kernels_match_the_reference(path, shape, m, rng):
    """The CPU kernel either builds per-tile tables or gathers each product
    from the LUT (small outputs); both give the reference bits, for either
    operand streamed, with special operands, in vmapped stacks."""
    opts = ax.KernelOptions(gemm=path)
    mm, k, n = shape
    lhs = random_nonzero(rng, (mm, k))
    rhs = random_nonzero(rng, (k, n))
    lhs[1, 17] = np.inf
    rhs[33, 2] = np.nan
    lhs[3, 5] = rhs[6, 4] = 1.0e-40  # subnormals flush to zero
    lhs[4, k - 3] = -3.0e38
    mults = [ax.mitchell(m), ax.truncated(m), ax.drum(m) if m >= 3 else ax.mitchell(m)]
    for dn, a, b in [
        ((((1,), (0,)), ((), ())), lhs, rhs),
        ((((0,), (1,)), ((), ())), np.ascontiguousarray(lhs.T), np.ascontiguousarray(rhs.T)),
    ]:
        stacked = jax.vmap(
            lambda mu, a=a, b=b, dn=dn: ax.dot_general(a, b, dn, multiplier=mu, options=opts)
        )
        got = np.asarray(stacked(ax.stack(mults)))
        t = a is not lhs
        described = plan(
            (1, *a.shape), (1, *b.shape), ax.stack(mults), transpose=(t, t), options=opts
        )
        assert described.startswith("gathers") == (path == "gathers"), described
        for i, mu in enumerate(mults):
            want = ref.sequential_dot_general(a, b, dn, mu.lut)
            np.testing.assert_array_equal(bits(got[i]), bits(want))


def _cpu_flag(name: str) -> bool:
    """Whether /proc/cpuinfo lists a CPU flag (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(name in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False


@pytest.mark.parametrize("m", [2, 3, 5, 7])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("shape", [(1100, 60, 100), (100, 60, 1100)])
def test_compact_tables_match_the_reference(m, transpose, shape, rng):
    """Where every LUT entry is bfloat16-exact (Mitchell, ApproxTrain's MBM,
    ALM-SOA at m <= 7), wide per-tile tables hold two entries to a word. The
    bits match the reference and the float tables: either operand streamed,
    contiguous and transposed storage, special operands in both, a stack of
    multipliers sharing the packing, and a partial column block. With
    AVX-512 the tables are built by word permutes from the LUT's planes, or
    with VBMI by byte permutes from its codes (every LUT but the one with
    zeros here); the planes (codes=False) and the transposing build
    (planes=False) give the same bits. A LUT with zero and tiny entries
    checks their signed zeros."""
    mm, k, n = shape
    lhs = random_nonzero(rng, (mm, k))
    rhs = random_nonzero(rng, (k, n))
    lhs[1, 17], lhs[mm - 1, k - 1], lhs[40, 3] = np.inf, -3.0e38, 1.0e-40
    rhs[33, 2], rhs[k - 1, n - 1], rhs[7, n - 5] = np.nan, 3.0e38, -1.0e-40
    rhs[5, n // 2] = lhs[mm // 2, 6] = 0.0
    holes = np.array(ax.mitchell(m).lut)
    holes[:: max(1, len(holes) // 3), 1::2] = 0.0  # zero entries
    holes[-1, 0] = 2.0**-30  # a small entry: a narrower regular range
    mbm = ax.mbm(m, force_lowest_bit=True, truncate_result=True)  # bfloat16-exact
    mults = [ax.mitchell(m), mbm, ax.alm_soa(m), ax.Multiplier(holes, name="holes")]
    for mu in mults:
        assert (np.asarray(mu.lut).view(np.uint32) & 0xFFFF == 0).all()
    dn = (((1,), (0,)), ((), ()))
    if transpose:
        lhs, rhs = np.ascontiguousarray(lhs.T), np.ascontiguousarray(rhs.T)
        dn = (((0,), (1,)), ((), ()))
    stack = ax.stack(mults)

    def run(**kw):
        opts = ax.KernelOptions(**kw)
        f = jax.jit(jax.vmap(lambda mu: ax.dot_general(lhs, rhs, dn, multiplier=mu, options=opts)))
        layout = plan((1, *lhs.shape), (1, *rhs.shape), stack, transpose=(transpose,) * 2,
                      options=opts)  # fmt: skip
        return np.asarray(f(stack)), layout

    got, layout = run()
    assert layout.startswith("compact tables nc=64"), layout
    avx512 = ax.cpu_kernel_variant() == "Avx512"
    assert ("codes" in layout) == (avx512 and _cpu_flag("avx512vbmi")), layout
    assert ("codes" in layout or "planes" in layout) == avx512, layout
    for i, mu in enumerate(mults):
        want = ref.sequential_dot_general(lhs, rhs, dn, mu.lut)
        np.testing.assert_array_equal(bits(got[i]), bits(want))
    planes, layout = run(codes=False)
    assert ("planes" in layout) == avx512 and "codes" not in layout, layout
    np.testing.assert_array_equal(bits(planes), bits(got))
    transposed, layout = run(codes=False, planes=False)
    assert "planes" not in layout, layout
    np.testing.assert_array_equal(bits(transposed), bits(got))
    floats, layout = run(compact=False)
    assert layout.startswith("tables nc=64"), layout
    np.testing.assert_array_equal(bits(floats), bits(got))


def _factored_lut(m):
    """A separable LUT that is not truncated(m): f[i] * g[j] with
    f = 1 + 3i / 2**(m + 2) and g = 1/2 + j / 2**(m + 1), exact in float32
    (at most 2m + 3 significant bits) for m <= 10."""
    i = np.arange(2**m, dtype=np.float64)
    f = 1.0 + 3.0 * i / 2.0 ** (m + 2)
    g = 0.5 + i / 2.0 ** (m + 1)
    lut = np.outer(f, g)
    assert (lut.astype(np.float32) == lut).all()
    return ax.Multiplier(lut.astype(np.float32), name=f"factored{m}")


@pytest.mark.parametrize("m", [2, 5, 7, 10, 11, 12])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("shape", [(300, 70, 90), (90, 70, 300), (40, 5000, 20)])
def test_separable_luts_run_as_exact_fma_gemms(m, transpose, shape, rng):
    """A LUT that factors exactly, lut[i, j] == f[i] * g[j] (truncated(m);
    DRUM, whose corner lut[0, 0] = f[0]**2 needs the factors scaled by its
    square root; a user LUT made of two other factors), runs as a GEMM of the
    transformed operands f[i(a)] * scale(a) and g[j(b)] * scale(b) with exact
    products in order of k: the bits of the reference and of per-tile tables
    (separable=False), with special operands in both (inf, NaN, zeros,
    subnormals, and exponents beyond the regular range, which take the
    scalar rule). truncated(12) factors only after rounding (its products
    have 26 bits): each product is rounded before it is added ("separable
    rounded"), with the same bits."""
    mm, k, n = shape
    lhs = random_nonzero(rng, (mm, k))
    rhs = random_nonzero(rng, (k, n))
    lhs[1, 17], lhs[mm - 1, k - 1], lhs[30, 3], lhs[2, 5] = np.inf, -3.0e38, 1.0e-40, 2.0**70
    rhs[33, 2], rhs[k - 1, n - 1], rhs[7, n - 5], rhs[9, 1] = np.nan, 3.0e38, -1.0e-40, 2.0**-80
    rhs[5, n // 2] = lhs[mm // 2, 6] = 0.0
    lhs[3, 9] = -0.0
    dn = (((1,), (0,)), ((), ()))
    if transpose:
        lhs, rhs = np.ascontiguousarray(lhs.T), np.ascontiguousarray(rhs.T)
        dn = (((0,), (1,)), ((), ()))
    fn = jax.jit(lambda a, b, mu, opts: ax.dot_general(a, b, dn, multiplier=mu, options=opts),
                 static_argnums=3)  # fmt: skip
    for mu in [ax.truncated(m), ax.drum(m)] + ([_factored_lut(m)] if m <= 10 else []):
        got = np.asarray(fn(lhs, rhs, mu, ax.KernelOptions()))
        layout = plan((1, *lhs.shape), (1, *rhs.shape), mu, transpose=(transpose,) * 2)
        rounded = m == 12 and mu.name.startswith("truncated")  # drum(12) is exact
        assert layout.startswith("separable rounded" if rounded else "separable nc"), layout
        want = ref.sequential_dot_general(lhs, rhs, dn, mu.lut)
        np.testing.assert_array_equal(bits(got), bits(want))
        off = ax.KernelOptions(separable=False)
        tables = np.asarray(fn(lhs, rhs, mu, off))
        layout = plan((1, *lhs.shape), (1, *rhs.shape), mu, transpose=(transpose,) * 2, options=off)
        assert not layout.startswith("separable"), layout
        np.testing.assert_array_equal(bits(tables), bits(got))


def test_which_luts_take_the_fma_path(rng):
    """A stack of separable LUTs shares the packing and takes the FMA path
    member by member (same bits as the reference); one non-separable LUT in
    a stack (Mitchell) keeps the whole call on tables; a forced kind
    (KernelOptions(gemm=...)) is honoured for truncated(m)."""
    lhs = random_nonzero(rng, (200, 60))
    rhs = random_nonzero(rng, (60, 100))
    lhs[4, 7] = np.inf
    dn = (((1,), (0,)), ((), ()))
    stacked = jax.vmap(lambda mu: ax.dot_general(lhs, rhs, dn, multiplier=mu))
    mults = ax.stack([ax.truncated(5), _factored_lut(5), ax.drum(5), ax.truncated(5)])
    got = np.asarray(stacked(mults))
    assert plan((1, 200, 60), (1, 60, 100), mults).startswith("separable")
    for i in range(len(mults)):
        want = ref.sequential_dot_general(lhs, rhs, dn, mults[i].lut)
        np.testing.assert_array_equal(bits(got[i]), bits(want))
    mixed = ax.stack([ax.truncated(5), ax.mitchell(5)])
    assert plan((1, 200, 60), (1, 60, 100), mixed).startswith("tables")
    gathers = ax.KernelOptions(gemm="gathers")
    assert plan((1, 200, 60), (1, 60, 100), ax.truncated(5), options=gathers).startswith("gathers")
    forced = ax.dot_general(lhs, rhs, dn, multiplier=ax.truncated(5), options=gathers)
    want = ref.sequential_dot_general(lhs, rhs, dn, ax.truncated(5).lut)
    np.testing.assert_array_equal(bits(forced), bits(want))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize(
    "kind,shape,expect",
    [
        ("mitchell", (300, 150, 100), "compact tables"),
        ("truncated", (300, 150, 100), "separable"),
        ("stack", (300, 150, 100), "tables"),
        ("stack", (40, 4150, 150), "tables"),  # two sum blocks
        ("truncated", (40, 4150, 150), "separable"),
        ("separable stack", (300, 150, 100), "separable"),
    ],
)
def test_streamed_operand_packed_once(kind, shape, expect, transpose, rng):
    """Where the output has several column blocks, the streamed operand is
    packed once before the units ("prepacked"; for one separable LUT per
    operand pair, already transformed: "prescaled") instead of once per
    column block (for a stack of separable LUTs, once per member from one
    packing): the same bits as packing per unit (prepack=False)
    and as the reference, with two batch groups, irregular rows (in either
    sum block of a long contraction), and both storage orders of the lhs.
    The packed operand's buffer is kept for later calls: the run after the
    first reuses it."""
    mm, k, n = shape
    lhs = random_nonzero(rng, (2, mm, k))
    rhs = random_nonzero(rng, (2, k, n))
    lhs[0, 3, 7], lhs[1, mm - 1, k - 30], lhs[1, 5, k // 2] = np.inf, -3.0e38, 1.0e-40
    rhs[1, 9, n - 10] = np.nan
    dn = (((2,), (1,)), ((0,), (0,)))
    if transpose:
        lhs = np.ascontiguousarray(np.swapaxes(lhs, 1, 2))
        dn = (((1,), (1,)), ((0,), (0,)))
    mults = {
        "mitchell": [ax.mitchell(7)],
        "truncated": [ax.truncated(7)],
        "stack": [ax.alm_soa(6), ax.truncated(6)],
        "separable stack": [ax.truncated(6), _factored_lut(6), ax.truncated(6)],
    }[kind]

    stack = ax.stack(mults)

    def run(**kw):
        opts = ax.KernelOptions(**kw)
        f = jax.vmap(lambda mu: ax.dot_general(lhs, rhs, dn, multiplier=mu, options=opts))
        layout = plan(lhs.shape, rhs.shape, stack, transpose=(transpose, False), options=opts)
        return np.asarray(jax.jit(f)(stack)), layout

    got, layout = run()
    assert layout.startswith(expect), layout
    np.testing.assert_array_equal(bits(run()[0]), bits(got))  # a reused buffer
    assert (" prescaled" if expect == "separable" else " prepacked") in layout, layout
    for i, mu in enumerate(mults):
        want = ref.sequential_dot_general(lhs, rhs, dn, mu.lut)
        np.testing.assert_array_equal(bits(got[i]), bits(want))
    per_unit, layout = run(prepack=False)
    assert "prepacked" not in layout and "prescaled" not in layout, layout
    np.testing.assert_array_equal(bits(per_unit), bits(got))


def test_compact_tables_only_for_bfloat16_exact_luts(rng):
    """One LUT with more than 8 significant bits in a stack (truncated(7): 16)
    keeps the whole call on float tables."""
    lhs = random_nonzero(rng, (1100, 60))
    rhs = random_nonzero(rng, (60, 100))
    mults = [ax.mitchell(7), ax.truncated(7)]
    dn = (((1,), (0,)), ((), ()))
    got = np.asarray(
        jax.vmap(lambda mu: ax.dot_general(lhs, rhs, dn, multiplier=mu))(ax.stack(mults))
    )
    layout = plan((1, 1100, 60), (1, 60, 100), ax.stack(mults))
    assert layout.startswith("tables nc=64"), layout
    for i, mu in enumerate(mults):
        want = ref.sequential_dot_general(lhs, rhs, dn, mu.lut)
        np.testing.assert_array_equal(bits(got[i]), bits(want))
