"""Integer multipliers: the catalog and its C twins, from_c on integer models,
characterization, and the integer LUT GEMM against the reference model."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import approxjax as ax
from approxjax._src.tools import c_models

LUTS = Path(__file__).resolve().parents[1] / "luts"
MATMUL = (((1,), (0,)), ((), ()))


def codes(rng, mult, operand, shape):
    """Random codes of an operand, never all zero."""
    lo, hi = mult.code_range(operand)
    wide = mult.bits[operand] > 8
    dtype = [[np.uint8, np.int8], [np.uint16, np.int16]][wide][mult.signed[operand]]
    x = rng.integers(lo, hi + 1, shape)
    x.flat[0] = hi  # never all zero
    return x.astype(dtype)


# --- the catalog -------------------------------------------------------------


@pytest.mark.parametrize(
    "make, source, function, flags",
    [
        (lambda: ax.integer.exact(8, signed=True), "int_exact.c", "exact_imul", []),
        (lambda: ax.integer.exact((8, 4), signed=False), "int_exact.c", "exact_imul", []),
        (lambda: ax.integer.truncated(8, 5), "int_array.c", "array_imul", ["-DBAM_VBL=5"]),
        (
            lambda: ax.integer.broken_array(8, hbl=2, vbl=6, signed=True),
            "int_array.c",
            "array_imul",
            ["-DBAM_HBL=2", "-DBAM_VBL=6"],
        ),
        (lambda: ax.integer.drum(8, 4, signed=True), "int_drum.c", "drum_imul", ["-DDRUM_K=4"]),
        (
            lambda: ax.integer.drum((6, 8), 3, signed=False),
            "int_drum.c",
            "drum_imul",
            ["-DDRUM_K=3"],
        ),
        (lambda: ax.integer.mitchell(8, signed=True), "int_mitchell.c", "mitchell_imul", []),
        (lambda: ax.integer.mitchell((8, 4), signed=False), "int_mitchell.c", "mitchell_imul", []),
        (lambda: ax.integer.kulkarni(8, signed=False), "int_kulkarni.c", "kulkarni_imul", []),
        (lambda: ax.integer.kulkarni(7, signed=True), "int_kulkarni.c", "kulkarni_imul", []),
    ],
)
def test_catalog_equals_its_c_twin(make, source, function, flags):
    mult = make()
    twin = ax.from_c(LUTS / source, function, bits=mult.bits, signed=mult.signed, flags=flags)
    assert twin.bits == mult.bits and twin.signed == mult.signed
    np.testing.assert_array_equal(np.asarray(twin.table), np.asarray(mult.table))


@pytest.mark.slow
def test_wide_twins_on_dense_pairs(monkeypatch):
    """The catalog's C twins over 12 bits against their NumPy definitions on
    4M random pairs and on every code of each operand against the other's
    extreme values (the check a wide design runs when it is made, denser:
    a difference raises)."""
    from approxjax._src.arithmetic import integer_catalog

    monkeypatch.setattr(integer_catalog, "_TWIN_SAMPLES", 1 << 22)
    monkeypatch.setattr(integer_catalog, "_TWIN_LINES", True)
    for make in (
        lambda: ax.integer.exact(16, signed=True),
        lambda: ax.integer.mitchell(16, signed=True),
        lambda: ax.integer.mitchell(16, signed=False),
        lambda: ax.integer.drum(16, 6, signed=True),
        lambda: ax.integer.truncated(16, 12),
        lambda: ax.integer.broken_array((16, 13), 3, 10, signed=True),
        lambda: ax.integer.kulkarni(16),
        lambda: ax.integer.kulkarni(15, signed=True),
    ):
        make()
    # the check is the one that refuses a wrong twin
    monkeypatch.setitem(integer_catalog._TWINS, "kulkarni", ("int_exact.c", "exact_imul", {}))
    with pytest.raises(RuntimeError, match="the C twin int_exact.c gives"):
        ax.integer.kulkarni(13)


def test_catalog_designs_by_their_definitions():
    v = np.arange(256)
    np.testing.assert_array_equal(ax.integer.exact(8, signed=False).table, np.outer(v, v))
    # truncated: k columns of partial products dropped; error at most their sum
    t = ax.integer.truncated(8, 4)
    err = t.exact_table() - np.asarray(t.table)
    assert err.min() == 0 and err.max() == 1 + 2 * 2 + 3 * 4 + 4 * 8
    # Kulkarni: 3 x 3 = 7 in every pair of digits
    k = ax.integer.kulkarni(8)
    assert int(k.table[255, 255]) == 255 * 255 - 2 * 85 * 85
    assert int(k.table[3, 3]) == 7 and int(k.table[2, 3]) == 6
    # Mitchell never overestimates a magnitude; exact on powers of two
    mi = ax.integer.mitchell(8, signed=True)
    tab = np.asarray(mi.table, np.int64)
    assert (np.abs(tab) <= np.abs(mi.exact_table())).all()
    assert int(ax.reference.integer_multiply(-64, 5, mi)) == -320
    # DRUM: magnitudes below 2**k are exact; signed is sign-magnitude
    d = ax.integer.drum(8, 4, signed=True)
    small = np.asarray(
        ax.reference.integer_multiply(np.arange(-15, 16)[:, None], np.arange(-15, 16), d)
    )
    np.testing.assert_array_equal(small, np.outer(np.arange(-15, 16), np.arange(-15, 16)))
    assert int(ax.reference.integer_multiply(-100, 7, d)) == -int(
        ax.reference.integer_multiply(100, 7, d)
    )


def test_catalog_by_name():
    designs = [
        ax.integer.mitchell(8, signed=True),
        ax.integer.drum(8, 4, signed=False),
        ax.integer.truncated(6, 3),
        ax.integer.broken_array(8, 2, 6, signed=True),
        ax.integer.kulkarni((8, 4)),
        ax.integer.exact(12, signed=False),
    ]
    for d in designs:
        again = ax.integer.get(d.name)
        assert again.name == d.name and (again.bits, again.signed) == (d.bits, d.signed)
        np.testing.assert_array_equal(np.asarray(again.table), np.asarray(d.table))
    assert [d.name for d in designs[:4]] == [
        "mitchell8s",
        "drum8u_k4",
        "truncated6u_k3",
        "bam8s_h2_v6",
    ]
    with pytest.raises(ValueError, match="must read <design><bits>"):
        ax.integer.get("mitchell8")
    with pytest.raises(ValueError, match="unknown integer design 'booth'"):
        ax.integer.get("booth8s")
    with pytest.raises(ValueError, match="mitchell has no parameter 'k'"):
        ax.integer.get("mitchell8s_k4")


def test_wide_catalog_designs_are_their_c_twins(monkeypatch):
    rng = np.random.default_rng(5)
    wide = [
        ax.integer.mitchell(16, signed=True),
        ax.integer.drum(16, 6, signed=True),
        ax.integer.truncated((14, 8), 10),
        ax.integer.broken_array(13, 2, 9, signed=True),
        ax.integer.kulkarni(16),
    ]
    for m in wide:
        assert m.table is None and m.function is not None and m.metadata["source"] == "catalog"
        assert ax.integer.get(m.name).name == m.name
    mi, dr, tr, ba, ku = wide
    a, b = rng.integers(-32768, 32768, 4000), rng.integers(-32768, 32768, 4000)
    # Mitchell: never above the exact magnitude, signed as the product,
    # exact where an operand is a power of two
    p = mi.products(a, b)
    assert (np.abs(p) <= np.abs(a * b)).all() and (np.sign(p) == np.sign(a * b)).all()
    np.testing.assert_array_equal(mi.products(a, -1024), a * -1024)
    # DRUM k=6: magnitudes below 64 exact; each reduced operand within 2**-5 of it
    sa, sb = rng.integers(-63, 64, 500), rng.integers(-63, 64, 500)
    np.testing.assert_array_equal(dr.products(sa, sb), sa * sb)
    rel = np.abs(dr.products(a, b) - a * b) / np.maximum(np.abs(a * b), 1)
    assert rel.max() <= (1 + 2.0**-5) ** 2 - 1
    # truncated k=10 columns (14 x 8 bits): error between 0 and the dropped columns' weight
    ua, ub = rng.integers(0, 1 << 14, 4000), rng.integers(0, 1 << 8, 4000)
    err = ua * ub - tr.products(ua, ub)
    assert err.min() >= 0 and err.max() <= sum((c + 1) * (1 << c) for c in range(10))
    # Kulkarni: 3 x 3 = 7 in every pair of digits
    assert int(ku.products(65535, 65535)) == 65535**2 - 2 * sum(4**i for i in range(8)) ** 2
    # a GEMM under a wide design: the exact sums of its products, rounded once
    qa, qb = codes(rng, dr, 0, (6, 9)), codes(rng, dr, 1, (9, 5))
    got = ax.dot_general(qa, qb, MATMUL, multiplier=dr, preferred_element_type=jnp.float32)
    want = dr.products(qa.astype(np.int64)[:, :, None], qb.astype(np.int64)[None]).sum(1)
    np.testing.assert_array_equal(np.asarray(got), want.astype(np.float32))
    # a twin that disagrees with the catalog's definition is refused
    from approxjax._src.arithmetic import integer_catalog

    monkeypatch.setitem(integer_catalog._TWINS, "mitchell", ("int_drum.c", "drum_imul", {}))
    with pytest.raises(RuntimeError, match="the C twin int_drum.c gives"):
        ax.integer.mitchell(14)


def test_catalog_bad_parameters():
    with pytest.raises(ValueError, match="operand widths must be 2 to 16"):
        ax.integer.exact(1)
    with pytest.raises(ValueError, match="operand widths must be 2 to 16"):
        ax.integer.drum(17)
    with pytest.raises(ValueError, match="integer tables hold operands of up to 12"):
        ax.IntegerMultiplier(np.zeros((1 << 13, 4), np.int32), bits=(13, 2))
    with pytest.raises(ValueError, match=r"vbl must be in \[0, 16\]"):
        ax.integer.broken_array(8, 0, 17)
    with pytest.raises(TypeError, match="k must be an int"):
        ax.integer.drum(8, 2.5)


# --- the type ----------------------------------------------------------------


def test_integer_multiplier_validation():
    v = np.arange(16)
    with pytest.raises(TypeError, match="float table"):
        ax.IntegerMultiplier(np.outer(v, v).astype(np.float32), bits=4)
    with pytest.raises(ValueError, match=r"shape \(16, 256\); got \(16, 16\)"):
        ax.IntegerMultiplier(np.outer(v, v), bits=(4, 8))
    with pytest.raises(ValueError, match="fit int32"):
        ax.IntegerMultiplier(np.full((4, 4), 2**40), bits=2)
    with pytest.raises(ValueError, match="cost"):
        ax.IntegerMultiplier(np.outer(v, v), bits=4, cost={"power_mW": -1})
    with pytest.raises(TypeError, match="signed must be a bool"):
        ax.IntegerMultiplier(np.outer(v, v), bits=4, signed="yes")
    m = ax.IntegerMultiplier(np.outer(v, v), bits=4, signed=False, cost={"power_mW": 0.1})
    assert m.cost == {"power_mW": 0.1} and m.bound == 225
    # a float multiplier and integer codes, or the reverse, fail clearly
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        ax.dot_general(
            np.ones((2, 2), np.int8), np.ones((2, 2), np.int8), MATMUL, multiplier=ax.mitchell(3)
        )
    with pytest.raises(TypeError, match="integer operand codes for both"):
        ax.dot_general(np.ones((2, 2), np.float32), np.ones((2, 2), np.int8), MATMUL, multiplier=m)
    with pytest.raises(TypeError, match="takes float multipliers"):
        ax.dot_general(
            np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), MATMUL,
            multiplier=ax.mitchell(3), input_grad_multiplier=m,
        )  # fmt: skip


# --- from_c on integer models ----------------------------------------------

EVO_HEADER = """/***
* This file contains a circuit of the kind EvoApproxLib ships (written here).
* MAE% = 0.0015 %
* MAE = 1.0
* WCE% = 0.0046 %
* WCE = 3.0
* EP% = 37.50 %
* PDK45_PWR = 0.363 mW
* PDK45_AREA = 635.0 um2
* PDK45_DELAY = 1.37 ns
*/
#include <stdint.h>
"""


def test_from_c_evoapprox_signatures():
    src = EVO_HEADER + "int16_t mul8s_T(int8_t A, int8_t B) { return (int16_t)(A * B) & ~1; }\n"
    m = ax.from_c(src, "mul8s_T", bits=8, signed=True)
    assert m.cost == {"power_mW": 0.363, "area_um2": 635.0, "delay_ns": 1.37}
    assert m.metadata["reported"]["MAE"] == 1.0 and m.metadata["reported"]["EP%"] == 37.5
    va = m.values(0)
    np.testing.assert_array_equal(np.asarray(m.table), (np.outer(va, va) & ~1))
    # operands in the other order, 64-bit types
    src = (
        "#include <stdint.h>\n"
        "uint64_t mul8u_S(const uint64_t B, const uint64_t A) { return A * B + (A == 255); }"
    )
    u = ax.from_c(src, "mul8u_S", bits=8, signed=False)
    assert int(u.table[3, 255]) == 766 and u.cost == {}  # the first parameter is lhs
    # unequal widths; C++
    src = "#include <cstdint>\nuint32_t mul8x4(uint16_t A, uint16_t B) { return A * B; }"
    w = ax.from_c(src, "mul8x4", bits=(8, 4), signed=(False, False), cxx=True)
    assert w.table.shape == (256, 16) and int(w.table[200, 15]) == 3000


@pytest.mark.slow
def test_from_c_twelve_bits():
    src = (
        "#include <stdint.h>\n"
        "uint32_t mul12u_X(uint16_t A, uint16_t B) { return (A * B) >> 2 << 2; }"
    )
    m = ax.from_c(src, "mul12u_X", bits=12, signed=False)
    assert m.table.shape == (4096, 4096) and int(m.table[4095, 4095]) == (4095 * 4095) >> 2 << 2
    assert ax.characterize(m).wce == 3


def test_from_c_integer_errors():
    with pytest.raises(TypeError, match="returns float: an integer model"):
        ax.from_c("float f(float a, float b) { return a * b; }", "f", bits=8)
    with pytest.raises(TypeError, match="returns int: a float model"):
        ax.from_c("int f(int a, int b) { return a * b; }", "f", 4)
    with pytest.raises(TypeError, match="exactly one"):
        ax.from_c("int f(int a, int b) { return a * b; }", "f", 4, bits=8)
    with pytest.raises(TypeError, match="exactly one"):
        ax.from_c("int f(int a, int b) { return a * b; }", "f")
    with pytest.raises(ValueError, match=r"2 to 16 bits; got bits=17"):
        ax.from_c("int f(int a, int b) { return a * b; }", "f", bits=17)
    with pytest.raises(ValueError, match="does not fit int32"):
        ax.from_c("long long f(long long a, long long b) { return a * b << 20; }", "f", bits=8)
    with pytest.raises(ax.CModelError, match=r"crashed .* at entry \[3, 0\] \(f\(3, 0\)\)"):
        ax.from_c(
            "#include <stdlib.h>\nint f(int a, int b) { if (a == 3) abort(); return a * b; }",
            "f",
            bits=4,
            signed=False,
        )
    with pytest.raises(ax.CModelError, match="did not finish within 2 s"):
        ax.from_c(
            "int f(int a, int b) { while (a == -2) {} return a * b; }", "f", bits=4, timeout=2
        )
    with pytest.raises(ax.CModelError, match="no function 'g'"):
        ax.from_c("int f(int a, int b) { return a * b; }", "g", bits=4)


def test_header_cost_parsing():
    assert c_models.header_cost("// PDK45_PWR = 0.5 mW\n// PDK45_AREA = 10 um2") == {
        "power_mW": 0.5,
        "area_um2": 10.0,
    }
    assert c_models.header_cost("int f(int a) { return a; }") == {}


# --- characterization -----------------------------------------------------------


@pytest.mark.parametrize(
    "mult",
    [
        ax.integer.mitchell(8, signed=True),
        ax.integer.truncated(8, 6),
        ax.integer.kulkarni((6, 4), signed=True),
        ax.integer.drum(7, 3, signed=False),
    ],
    ids=lambda m: m.name,
)
def test_characterize_against_numpy(mult):
    c = ax.characterize(mult)
    va, vb = mult.values(0), mult.values(1)
    exact = va[:, None] * vb[None, :]
    e = np.asarray(mult.table, np.int64) - exact
    out_range = 2.0 ** sum(mult.bits)
    rel = np.abs(e) / np.maximum(np.abs(exact), 1)
    assert c.exhaustive and c.count == e.size
    assert c.mae == np.abs(e).mean() and c.mae_percent == pytest.approx(
        100 * np.abs(e).mean() / out_range, rel=1e-15
    )
    assert c.wce == np.abs(e).max() and c.wce_percent == 100 * np.abs(e).max() / out_range
    assert c.ep == 100 * np.count_nonzero(e) / e.size
    assert c.mse == (e.astype(np.float64) ** 2).mean()
    assert c.bias == e.mean()
    assert c.mre == pytest.approx(100 * rel.mean(), rel=1e-12)
    assert c.wcre_percent == pytest.approx(100 * rel.max(), rel=1e-15)
    assert mult.name in str(c)


def test_exact_multiplier_has_no_error_and_plot(tmp_path):
    c = ax.characterize(ax.integer.exact(6))
    assert (c.mae, c.wce, c.ep, c.mse, c.bias) == (0, 0, 0, 0, 0)
    fig = ax.plot_errors([ax.integer.mitchell(6), ax.integer.drum(6, 3)], tmp_path / "int.png")
    assert (tmp_path / "int.png").stat().st_size > 10_000 and len(fig.axes) >= 4


# --- the integer GEMM ------------------------------------------------------------

GEMM_MULTS = [
    ax.integer.mitchell(8, signed=True),
    ax.integer.exact(8, signed=False),
    ax.integer.kulkarni((8, 4), signed=False),
    ax.integer.drum(10, 4, signed=True),
    ax.integer.truncated(4, 3, signed=True),
]


@settings(max_examples=25, deadline=None)
@given(
    mult=st.sampled_from(GEMM_MULTS),
    m=st.integers(1, 70),
    k=st.integers(1, 90),
    n=st.integers(1, 140),
    batch=st.integers(1, 3),
    layout=st.sampled_from(["mk,kn", "km,kn", "mk,nk", "bmk,bkn", "bkm,bnk"]),
    seed=st.integers(0, 2**31),
)
def test_gemm_matches_reference(mult, m, k, n, batch, layout, seed):
    rng = np.random.default_rng(seed)
    lhs_spec, rhs_spec = layout.split(",")
    sizes = dict(m=m, k=k, n=n, b=batch)
    a = codes(rng, mult, 0, [sizes[c] for c in lhs_spec])
    b = codes(rng, mult, 1, [sizes[c] for c in rhs_spec])
    dn = ((( lhs_spec.index("k"),), (rhs_spec.index("k"),)),
          (tuple(i for i, c in enumerate(lhs_spec) if c == "b"),
           tuple(i for i, c in enumerate(rhs_spec) if c == "b")))  # fmt: skip
    want = np.asarray(ax.reference.integer_dot_general(a, b, dn, mult))
    got = ax.dot_general(a, b, dn, multiplier=mult)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize(
    "options",
    [
        dict(gemm="gathers"),
        dict(gemm="tables", variant="baseline"),
        dict(gemm="tables", variant="avx2"),  # transposing builds, paired sweeps
        dict(gemm="tables", variant="avx2", pairs=False),  # one k at a time
        dict(gemm="tables", variant="avx512"),  # byte-permute builds, paired sweeps
        dict(gemm="tables", variant="avx512", codes=False),  # word-permute builds
        dict(gemm="tables", variant="avx512", pairs=False),  # one k at a time
        dict(gemm="tables", variant="avx512", pairs=False, codes=False),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_gemm_paths_and_variants(options):
    variant = options.get("variant", "auto")
    if variant in ("avx2", "avx512") and ax.cpu_kernel_variant() == "Baseline":
        pytest.skip("this CPU has no vector variant")
    if variant == "avx512" and ax.cpu_kernel_variant() != "Avx512":
        pytest.skip("this CPU has no AVX-512")
    rng = np.random.default_rng(1)
    # int16 entries, biased uint16 ones, 8x4 bits, int32 ones, and tables of
    # 16 and 8 rows (the transposing build's partial block of rows)
    mults = GEMM_MULTS[:5] + [ax.integer.exact((3, 8), signed=True)]
    for mult in mults:
        a = codes(rng, mult, 0, (300, 77))
        b = codes(rng, mult, 1, (77, 130))
        want = np.asarray(ax.reference.integer_dot_general(a, b, MATMUL, mult))
        got = ax.dot_general(a, b, MATMUL, multiplier=mult, options=ax.KernelOptions(**options))
        np.testing.assert_array_equal(np.asarray(got), want)


def test_exact_multiplier_equals_xla_int_dot():
    rng = np.random.default_rng(2)
    for signed in (True, False):
        mult = ax.integer.exact(8, signed=signed)
        a = codes(rng, mult, 0, (257, 300))
        b = codes(rng, mult, 1, (300, 65))
        got = jax.jit(lambda a, b, mult=mult: ax.dot_general(a, b, MATMUL, multiplier=mult))(a, b)
        want = jax.lax.dot_general(a, b, MATMUL, preferred_element_type=jnp.int32)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        # the other orientation (wide rhs: the kernel transposes the problem)
        got = ax.dot_general(b.T, a.T, MATMUL, multiplier=mult)
        want = jax.lax.dot_general(b.T, a.T, MATMUL, preferred_element_type=jnp.int32)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_vmap_over_a_stack_is_one_call():
    rng = np.random.default_rng(3)
    mults = [ax.integer.exact(8), ax.integer.mitchell(8), ax.integer.drum(8, 3)]
    a = codes(rng, mults[0], 0, (40, 50))
    b = codes(rng, mults[0], 1, (50, 30))
    f = jax.jit(jax.vmap(lambda mm: ax.dot_general(a, b, MATMUL, multiplier=mm)))
    stacked = ax.stack(mults)
    out = f(stacked)
    for i, mm in enumerate(mults):
        np.testing.assert_array_equal(
            np.asarray(out[i]), np.asarray(ax.reference.integer_dot_general(a, b, MATMUL, mm))
        )
    hlo = f.lower(stacked).as_text()
    assert hlo.count("approxjax_int_gemm") == 1
    with pytest.raises(ValueError, match="share widths and signedness"):
        ax.stack([ax.integer.exact(8), ax.integer.exact(8, signed=False)])
    with pytest.raises(ValueError, match="map over it with jax.vmap"):
        ax.dot_general(a, b, MATMUL, multiplier=stacked)


@pytest.mark.parametrize("huge_pages", [True, False])
def test_stack_with_a_large_output(huge_pages):
    """Outputs of 4 MiB and more are put on 2 MiB pages (MADV_HUGEPAGE, a
    hint about how their memory is backed): the same bits either way."""
    rng = np.random.default_rng(4)
    mults = [ax.integer.drum(8, 4, signed=True), ax.integer.kulkarni(8, signed=True)]
    a = codes(rng, mults[0], 0, (1000, 9))
    b = codes(rng, mults[0], 1, (9, 600))  # two 1000 x 600 int32 outputs: 4.6 MiB
    options = ax.KernelOptions(huge_pages=huge_pages)
    f = jax.jit(jax.vmap(lambda mm: ax.dot_general(a, b, MATMUL, multiplier=mm, options=options)))
    out = np.asarray(f(ax.stack(mults)))
    for i, mm in enumerate(mults):
        want = np.asarray(ax.reference.integer_dot_general(a, b, MATMUL, mm))
        np.testing.assert_array_equal(out[i], want)


def test_gemm_bad_input():
    mult = ax.integer.mitchell(8)
    a = np.ones((4, 5), np.int8)
    with pytest.raises(
        ValueError, match=r"rhs\[0, 1\] = 200 is outside the 8-bit signed code range"
    ):
        ax.dot_general(a, np.array([[1, 200]] * 5, np.int16), MATMUL, multiplier=mult)
    traced = jax.jit(lambda a, b: ax.dot_general(a, b, MATMUL, multiplier=mult))
    with pytest.raises(Exception, match="outside the multiplier's code range"):
        traced(a, jnp.full((5, 2), -300, jnp.int16)).block_until_ready()
    big = ax.integer.exact(12, signed=False)
    with pytest.raises(ValueError, match="may overflow the int32 sums; contractions of up to 128"):
        ax.dot_general(
            np.ones((2, 200), np.uint16), np.ones((200, 2), np.uint16), MATMUL, multiplier=big
        )
    with pytest.raises(ValueError, match="no gradient"):
        ax.dot_general(a, a.T, MATMUL, multiplier=mult, input_grad_multiplier=None)
    with pytest.raises(ValueError, match="run by their tables"):
        ax.dot_general(a, a.T, MATMUL, multiplier=mult, method="native")
    # K = 0: zeros, no kernel error
    out = ax.dot_general(
        np.ones((3, 0), np.int8), np.ones((0, 2), np.int8), MATMUL, multiplier=mult
    )
    np.testing.assert_array_equal(np.asarray(out), np.zeros((3, 2), np.int32))


def test_characterize_cli_takes_integer_multipliers(tmp_path, capsys):
    """`approxjax characterize` with float and integer names: a table for each
    kind (the integer one with the field's metrics, equal to characterize's),
    the rank report for the float ones, a plot per kind."""
    from approxjax._src.runner.cli import main

    png = tmp_path / "errors.png"
    assert main(["characterize", "mitchell4s", "drum4u_k2", "mitchell3", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    want = ax.characterize(ax.integer.get("drum4u_k2"))
    assert float(lines["drum4u_k2"][1]) == pytest.approx(want.mae, rel=1e-3)
    assert float(lines["drum4u_k2"][6]) == pytest.approx(want.ep, abs=0.01)
    assert "mitchell3:" in out and "mitchell4s:" not in out  # ranks: float multipliers only
    assert png.stat().st_size > 10_000 and (tmp_path / "errors_integer.png").stat().st_size > 10_000
    with pytest.raises(TypeError, match="not both in one figure"):
        ax.plot_errors([ax.mitchell(3), ax.integer.get("mitchell4s")])


# --- function models (operands over 12 bits) ----------------------------------

WIDE = """
#include <stdint.h>
// PDK45_PWR = 2.5 mW
/* a 16 x 16 multiplier that drops the 6 low product bits (floor) */
int64_t mul16s_floor6(int16_t a, int16_t b) { return ((int64_t)a * b) >> 6 << 6; }
/* 16 x 8 unsigned: the exact product minus its 3 low bits, ORed with 1 */
uint32_t mul16x8u_or1(uint16_t a, uint8_t b) { return (((uint32_t)a * b) & ~7u) | 1u; }
"""


def floor6(a, b):
    return (a.astype(np.int64) * b.astype(np.int64)) >> 6 << 6


def or1(a, b):
    return ((a.astype(np.int64) * b.astype(np.int64)) & ~7) | 1


@pytest.fixture(scope="module")
def wide():
    return (
        ax.from_c(WIDE, "mul16s_floor6", bits=16, signed=True),
        ax.from_c(WIDE, "mul16x8u_or1", bits=(16, 8), signed=False),
    )


def test_function_model_gemm_matches_numpy(wide):
    s16, u16x8 = wide
    assert repr(s16).endswith("ss, function model)") and s16.cost == {"power_mW": 2.5}
    assert s16.batch_shape == () and not jax.tree_util.tree_leaves(s16)
    rng = np.random.default_rng(3)
    # full-range codes: sums beyond int32, asked for as float32 (each exact sum rounded once)
    a, b = codes(rng, s16, 0, (2, 5, 9)), codes(rng, s16, 1, (2, 9, 4))
    a[0] = rng.integers(16384, 32768, (5, 9))  # sums of large products: beyond int32
    b[0] = rng.integers(16384, 32768, (9, 4))
    dn = (((2,), (1,)), ((0,), (0,)))
    want = (floor6(a[:, :, :, None], b[:, None, :, :])).sum(2)
    got = jax.jit(
        lambda a, b: ax.dot_general(a, b, dn, multiplier=s16, preferred_element_type=jnp.float32)
    )(a, b)
    assert got.dtype == jnp.float32 and (np.abs(want) > 2**31).any()
    np.testing.assert_array_equal(np.asarray(got), want.astype(np.float32))
    # small codes fit int32 sums: exact int32, and vmap over the operands
    a, b = a % 300, b % 300
    want = (floor6(a[:, :, :, None], b[:, None, :, :])).sum(2)
    got = jax.vmap(lambda x, y: ax.dot_general(x, y, MATMUL, multiplier=s16))(a, b)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), want)
    # unequal widths, contraction over the lhs's first axis
    x, y = codes(rng, u16x8, 0, (7, 3)), codes(rng, u16x8, 1, (7, 6))
    got = ax.dot_general(x, y, (((0,), (0,)), ((), ())), multiplier=u16x8,
                         preferred_element_type=jnp.float32)  # fmt: skip
    want = or1(x.T[:, :, None], y[None]).sum(1)
    np.testing.assert_array_equal(np.asarray(got), want.astype(np.float32))
    np.testing.assert_array_equal(u16x8.products([65535, 3], [255, 9]), or1(
        np.array([65535, 3]), np.array([255, 9])))  # fmt: skip


def test_function_model_errors(wide):
    s16, _ = wide
    big = np.full((2, 4), 30000, np.int16)
    with pytest.raises(Exception, match=r"does not fit int32 \(ask for float32 sums"):
        ax.dot_general(big, big.T, MATMUL, multiplier=s16).block_until_ready()
    with pytest.raises(ValueError, match=r"lhs\[0, 0\] = 40000 is outside the 16-bit signed"):
        ax.dot_general(np.full((1, 2), 40000, np.int32), big.T, MATMUL, multiplier=s16)
    traced = jax.jit(lambda a, b: ax.dot_general(a, b, MATMUL, multiplier=s16))
    with pytest.raises(Exception, match=r"rhs holds -40000, outside the operand range"):
        traced(big, jnp.full((4, 2), -40000, jnp.int32)).block_until_ready()
    with pytest.raises(TypeError, match="function model .* no table to stack"):
        ax.stack([s16, s16])
    with pytest.raises(TypeError, match="products are multiplier.products"):
        ax.reference.integer_multiply(1, 2, s16)
    with pytest.raises(ValueError, match="gradient='lut' differentiates a table"):
        ax.Quantized(s16, gradient="lut")
    with pytest.raises(ValueError, match="quantize symmetrically"):
        ax.Quantized(s16, rhs=ax.QuantSpec(symmetric=False))
    wide_exact = ax.integer.exact(14, signed=False)
    assert wide_exact.name == "exact14u" and wide_exact.function is not None
    assert wide_exact.products([16383], [16383])[0] == 16383**2
    with pytest.raises(ValueError, match="samples apply to function models"):
        ax.characterize(ax.integer.exact(4), samples=100)
    crash = (
        "#include <stdlib.h>\n"
        "int f(int a, int b) { if (a == -8192 && b == 8191) abort(); return a * b; }"
    )
    with pytest.raises(ax.CModelError, match=r"crashed .* at the operands \(-8192, 8191\)"):
        ax.from_c(crash, "f", bits=14)


def test_function_model_quantized_layers(wide):
    from approxjax._src.arithmetic.quantization import calibrate, quantize

    s16, _ = wide
    q = ax.Quantized(s16, gradient="quantized")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 20)).astype(np.float32)
    w = rng.standard_normal((20, 5)).astype(np.float32)
    got = ax.dot_general(x, w, MATMUL, multiplier=q)
    # the same quantization by hand, the sums in NumPy int64
    sa, _ = calibrate(x, (0, 1), 16, True, q.lhs)
    sb, _ = calibrate(w, (0,), 16, True, q.rhs)
    qa = np.asarray(quantize(x, sa, 0, 16, True))
    qb = np.asarray(quantize(w, sb, 0, 16, True))
    sums = floor6(qa[:, :, None], qb[None]).sum(1).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(got), sums * (np.asarray(sa) * np.asarray(sb)))
    np.testing.assert_allclose(np.asarray(got), x @ w, atol=2e-3)
    da, dw = jax.grad(lambda x, w: ax.dot_general(x, w, MATMUL, multiplier=q).sum(), (0, 1))(x, w)
    np.testing.assert_allclose(np.asarray(da), np.ones((6, 5)) @ w.T, atol=2e-3)
    np.testing.assert_allclose(np.asarray(dw), x.T @ np.ones((6, 5)), atol=2e-3)
    img = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    out = ax.conv_general_dilated(img, k, (1, 1), "SAME", dimension_numbers=dn,
                                  multiplier=ax.Quantized(s16))  # fmt: skip
    ref = jax.lax.conv_general_dilated(img, k, (1, 1), "SAME", dimension_numbers=dn)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=3e-3)


def test_function_model_characterization_is_sampled(wide, tmp_path):
    s16, _ = wide
    r = ax.characterize(s16, samples=5000, seed=7)
    rng = np.random.default_rng(7)
    a = rng.integers(-32768, 32768, 5000)
    b = rng.integers(-32768, 32768, 5000)
    e = floor6(a, b) - a * b
    assert not r.exhaustive and r.count == 5000 and "(sampled)" in str(r)
    assert r.wce == np.abs(e).max() and r.mae == np.abs(e).mean() and r.bias == e.mean()
    assert r.ep == 100 * np.count_nonzero(e) / 5000 and r.mse == (e * e).mean()
    # errors near 2**30: their squares' sum overflows int64, the metrics stay exact
    zero = ax.from_c("long long z(long long a, long long b) { return 0; }", "z", bits=16)
    r = ax.characterize(zero, samples=5000, seed=7)
    assert r.mse == sum(int(v) ** 2 for v in a * b) / 5000 and r.wce == np.abs(a * b).max()
    ax.plot_errors([s16], tmp_path / "wide.png")
    assert (tmp_path / "wide.png").stat().st_size > 10_000
