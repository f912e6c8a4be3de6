"""The multiplier catalog, C/Python models to LUTs, LUT files and characterization."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _util import bits

import approxjax as ax
from approxjax import reference as ref

LUTS = Path(__file__).resolve().parents[1] / "luts"
C_MODELS = [
    ("truncated.c", "truncated_mul", [], lambda m: ax.truncated(m)),
    (
        "truncated.c",
        "truncated_mul",
        ["-DTRUNCATE_RESULT=1"],
        lambda m: ax.truncated(m, truncate_result=True),
    ),
    ("mitchell.c", "mitchell_mul", [], lambda m: ax.mitchell(m)),
    ("mbm.c", "mbm_mul", [], lambda m: ax.mbm(m)),
    (
        "mbm.c",
        "mbm_mul",
        ["-DFORCE_LOWEST_BIT=1", "-DTRUNCATE_RESULT=1"],
        lambda m: ax.mbm(m, force_lowest_bit=True, truncate_result=True),
    ),
    ("drum.c", "drum_mul", ["-DDRUM_K=3"], lambda m: ax.drum(m, 3)),
    ("alm_soa.c", "alm_soa_mul", ["-DALM_SOA_W=2"], lambda m: ax.alm_soa(m, 2)),
    ("lowblock.c", "lowblock_mul", ["-DLOWBLOCK_K=2"], lambda m: ax.lowblock(m, min(2, m))),
]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("APPROXJAX_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "c_models"))


def _exact(m):
    sig = ax.significands(m)
    return np.outer(sig, sig)


@pytest.mark.parametrize("m", [0, 1, 3, 7, 10])
def test_every_constructor_builds_valid_tables(m):
    for name in ("truncated", "mitchell", "mbm", "alm_soa", "lowblock") + (("drum",) if m else ()):
        mult = ax.get(name, m)
        assert mult.mantissa_bits == m and mult.lut.shape == (1 << m, 1 << m)
        assert np.all(np.isfinite(mult.lut)) and np.all(np.asarray(mult.lut) > 0)
        assert ax.get(mult.name).name == mult.name  # names are specs


def test_mitchell_formula_and_known_error():
    m = 7
    lut = np.asarray(ax.mitchell(m).lut, np.float64)
    exact = _exact(m)
    assert np.all(lut <= exact)  # never overestimates
    rel = (exact - lut) / exact
    i, j = np.unravel_index(np.argmax(rel), rel.shape)
    assert (i, j) == (64, 64)  # x = y = 0.5
    assert rel.max() == pytest.approx(1 / 9, rel=1e-12)
    assert lut[32, 32] == 1.5  # x = y = 0.25: 1 + x + y
    assert lut[96, 96] == 3.0  # x = y = 0.75: 2 (x + y)


@pytest.mark.parametrize("m,changed", [(1, 0), (3, 0), (5, 60), (7, 1220)])
def test_mbm_keeps_the_correction_where_it_carries(m, changed):
    """ApproxTrain's published MBM_m tables keep the correction c where the
    fraction sum s has no carry but s + c >= 1 (the product reaches the next
    binade): derived from that rule, the boundary entries and how many there
    are (60 at m = 5, 1220 at m = 7, as the published tables differ from the
    rule that drops it)."""
    c = 2**-4 + 2**-6
    lut = np.asarray(ax.mbm(m, force_lowest_bit=True, truncate_result=True).lut, np.float64)
    x = (np.arange(1 << m) | 1) / 2**m
    s = x[:, None] + x[None, :]
    boundary = (s < 1) & (s + c >= 1)
    assert int(boundary.sum()) == changed
    expect = np.floor((1 + s + c) / 2 * 2**m) / 2**m * 2  # truncated in the binade [2, 4)
    np.testing.assert_array_equal(lut[boundary], expect[boundary])
    assert np.all(lut[boundary] >= 2)
    if m == 7:  # the two entries quoted from the published MBM_7.bin
        assert lut[0, 118] == 2.015625 and lut[0, 116] == 2.0


def test_mbm_formula_and_small_bias():
    m = 7
    lut = np.asarray(ax.mbm(m).lut, np.float64)
    c = 2**-4 + 2**-6
    assert lut[0, 0] == 1 + c
    assert lut[64, 64] == 2 * (1 + c / 2)  # s = 1 carries: halved term
    # No carry, but the corrected sum reaches the next binade: kept (ApproxTrain's tables).
    assert lut[127, 0] == 1 + 127 / 128 + c
    # Carry, and the halved term would reach 4: left out.
    assert lut[127, 127] == 2 * (127 / 128 + 127 / 128)
    mitchell = ax.characterize(ax.mitchell(m)).table
    mbm = ax.characterize(ax.mbm(m)).table
    assert abs(mbm.mean_relative_error) < abs(mitchell.mean_relative_error) / 5
    assert mitchell.mean_relative_error < 0


def test_drum_and_alm_soa_formulas():
    lut = np.asarray(ax.drum(4, 3).lut, np.float64)
    # k = 3: two fraction bits kept (of four), the lowest forced to 1:
    # 0b0000 -> 0b0100, 0b1111 -> 0b1100
    assert lut[0, 0] == (1 + 4 / 16) ** 2
    assert lut[15, 0] == (1 + 12 / 16) * (1 + 4 / 16)
    np.testing.assert_array_equal(ax.drum(4, 5).lut, ax.truncated(4).lut)  # k = m + 1 is exact
    np.testing.assert_array_equal(ax.alm_soa(6, 0).lut, ax.mitchell(6).lut)
    soa = np.asarray(ax.alm_soa(4, 2).lut, np.float64)
    # i = 0b0101, j = 0b0110: upper parts 0b01 + 0b01 = 0b10, low bits set: 0b1011
    assert soa[5, 6] == 1 + 11 / 16
    mitchell = ax.characterize(ax.mitchell(8)).table.mean_relative_error
    assert ax.characterize(ax.alm_soa(8, 4)).table.mean_relative_error > mitchell


def test_approxtrain_variants_by_hand():
    # MIT_1: x, y in {0, 0.5}; (0.5, 0.5) sums to 1 and carries: 2.0.
    np.testing.assert_array_equal(
        np.asarray(ax.mitchell(1, truncate_result=True).lut).reshape(-1), [1.0, 1.5, 1.5, 2.0]
    )
    # MBM_3 with the lowest bit forced: i = j = 0 -> x = y = 1/8, s = 1/4,
    # 1 + s + c = 1.328125, truncated to 3 bits: 1.25.
    mbm3 = np.asarray(ax.mbm(3, force_lowest_bit=True, truncate_result=True).lut)
    assert mbm3[0, 0] == 1.25
    # ACC_7: exact product of truncated operands, result truncated to 7 bits.
    acc = np.asarray(ax.truncated(7, truncate_result=True).lut, np.float64)
    assert acc[127, 127] == 3.96875  # (255/128)**2 = 2 * 1.98440..., 7 bits: 2 * 254/128
    assert np.all(np.asarray(ax.truncated(7).lut) >= acc)


@pytest.mark.parametrize("m", [1, 3, 5, 7])
def test_approxtrain_files_round_trip(m, tmp_path):
    for mult in (
        ax.mitchell(m, truncate_result=True),
        ax.mbm(m, force_lowest_bit=True, truncate_result=True),
        ax.truncated(m, truncate_result=True),
    ):
        path = ax.save_approxtrain(mult, tmp_path / f"X_{m}.bin")
        assert path.stat().st_size == 1 << (2 * m)
        back = ax.load_approxtrain(path)
        np.testing.assert_array_equal(bits(back.lut), bits(mult.lut))


def test_approxtrain_byte_layout(tmp_path):
    # m = 1, i-major: entry (i << 1) | j; bit 7 = carry, low bit = fraction.
    (tmp_path / "MIT_1.bin").write_bytes(bytes([0x00, 0x01, 0x01, 0x80]))
    lut = np.asarray(ax.load_approxtrain(tmp_path / "MIT_1.bin").lut)
    np.testing.assert_array_equal(lut, [[1.0, 1.5], [1.5, 2.0]])
    legacy = np.array([0, 1 << 22, 1 << 22, 1 << 31], "<u4")  # uint32 release format
    (tmp_path / "OLD_1.bin").write_bytes(legacy.tobytes())
    np.testing.assert_array_equal(ax.load_approxtrain(tmp_path / "OLD_1.bin").lut, lut)


def test_approxtrain_bad_files(tmp_path):
    (tmp_path / "MBM_7.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="has 100 bytes; an ApproxTrain table with m=7 has 16384"):
        ax.load_approxtrain(tmp_path / "MBM_7.bin")
    (tmp_path / "table.bin").write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match="cannot read m from the file name"):
        ax.load_approxtrain(tmp_path / "table.bin")
    (tmp_path / "X_1.bin").write_bytes(bytes([0x00, 0x40, 0x01, 0x80]))
    with pytest.raises(ValueError, match="outside the carry"):
        ax.load_approxtrain(tmp_path / "X_1.bin")
    with pytest.raises(ValueError, match="not \\(1 \\+ f/2\\*\\*3\\)"):
        ax.save_approxtrain(ax.mbm(3), tmp_path / "Y_3.bin")
    assert not (tmp_path / "Y_3.bin").exists()


@pytest.mark.parametrize("m", [3, 7])
@pytest.mark.parametrize("source,function,flags,python", C_MODELS)
def test_c_models_equal_the_catalog(source, function, flags, python, m):
    mult = ax.from_c(LUTS / source, function, m, flags=flags)
    np.testing.assert_array_equal(bits(mult.lut), bits(python(m).lut))
    assert mult.metadata["source_hash"]


def test_c_model_source_text_and_cxx():
    src = "float half_mul(float a, float b) { return a * b * 0.5f; }"
    mult = ax.from_c(src, "half_mul", 4)
    np.testing.assert_array_equal(mult.lut, np.asarray(ax.truncated(4).lut) * 0.5)
    cxx = "#include <cmath>\nfloat cmul(float a, float b) { return std::fabs(a) * b; }"
    with pytest.raises(ValueError, match="depend on the mantissas alone"):
        ax.from_c(cxx, "cmul", 3, cxx=True)


def test_c_model_errors(tmp_path):
    with pytest.raises(ValueError, match="(?s)does not compile:.*error: expected expression"):
        ax.from_c("float f(float a, float b) { return a * ; }", "f", 3)
    with pytest.raises(ValueError, match="no function 'nope'"):
        ax.from_c("float f(float a, float b) { return a * b; }", "nope", 3)
    with pytest.raises(ValueError, match="gave -.* for positive operands"):
        ax.from_c("float f(float a, float b) { return -a * b; }", "f", 3)
    with pytest.raises(ValueError, match="gave nan"):
        ax.from_c("float f(float a, float b) { return (a - 1.0f) / (b - 1.0f); }", "f", 2)
    exponent_dependent = "float f(float a, float b) { return a * b + 0.001f; }"
    with pytest.raises(ValueError, match="worst: f\\("):
        ax.from_c(exponent_dependent, "f", 3)
    with pytest.warns(UserWarning, match="does not depend on the mantissas alone"):
        ax.from_c(exponent_dependent, "f", 3, validate="warn")
    with pytest.raises(FileNotFoundError):
        ax.from_c(tmp_path / "missing.c", "f", 3)


def test_from_function():
    mult = ax.from_function(lambda x, y: x * y, 5)
    np.testing.assert_array_equal(mult.lut, ax.truncated(5).lut)
    with pytest.raises(ValueError, match=r"shape \(8, 8\); got \(8,\)"):
        ax.from_function(lambda x, y: x[0], 3)
    with pytest.raises(ValueError, match="gave nan"):
        ax.from_function(lambda x, y: np.where(x > 1.5, np.nan, x * y), 3)


def test_lut_files_round_trip_and_corruption(tmp_path):
    mult = ax.mbm(5)
    path = ax.save_lut(mult, tmp_path / "mbm5", note="test")
    assert path.name == "mbm5.npz"
    back = ax.load_lut(path)
    np.testing.assert_array_equal(bits(back.lut), bits(mult.lut))
    assert back.name == "mbm5" and back.metadata["note"] == "test"
    assert back.metadata["mantissa_bits"] == 5 and "approxjax_version" in back.metadata
    raw = path.read_bytes()
    (tmp_path / "short.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable approxjax LUT file"):
        ax.load_lut(tmp_path / "short.npz")
    np.savez(tmp_path / "other.npz", table=np.ones((2, 2)))
    with pytest.raises(ValueError, match="expected 'lut' and 'metadata'"):
        ax.load_lut(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        ax.load_lut(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="one multiplier"):
        ax.save_lut(ax.stack([mult, mult]), tmp_path / "stack.npz")
    assert not (tmp_path / "stack.npz").exists()


def test_stack_names_and_get_errors():
    s = ax.stack([ax.mitchell(7), ax.mbm(7), ax.get("drum7:k=4")])
    assert s.names == ("mitchell7", "mbm7", "drum7:k=4")
    assert s[1].name == "mbm7"
    known = "known: alm_soa, drum, lowblock, mbm, mitchell, truncated"
    with pytest.raises(ValueError, match=known):
        ax.get("booth7")
    with pytest.raises(ValueError, match="needs its mantissa bits"):
        ax.get("mitchell")
    with pytest.raises(ValueError, match="names m=7 but m=5"):
        ax.get("mitchell7", 5)
    with pytest.raises(ValueError, match="drum needs 2 <= k <= 8; got k=9"):
        ax.drum(7, 9)
    with pytest.raises(ValueError, match="mantissa bits m must be in"):
        ax.mitchell(13)


def test_characterize_with_samples(rng):
    w = rng.standard_normal(500).astype(np.float32)
    x = rng.standard_normal(700).astype(np.float32)
    r = ax.characterize(ax.truncated(7), samples=(w, x))
    assert r.table.mred == 0 and r.samples is not None
    assert 0 < r.samples.mred < 2**-6  # operand truncation error only
    assert r.samples.mean_relative_error < 0  # truncation always rounds down
    text = str(ax.characterize(ax.mitchell(7), samples=w))
    assert "mitchell7" in text and "samples" in text


def test_characterize_cli_and_plot(tmp_path):
    png = tmp_path / "errors.png"
    argv = [sys.executable, "-m", "approxjax", "characterize", "mitchell", "mbm", "truncated"]
    proc = subprocess.run(
        [*argv, "-m", "7", "--plot", str(png)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert "mitchell7" in proc.stdout and "mbm7" in proc.stdout
    assert f"plot: {png}" in proc.stdout
    assert png.stat().st_size > 30_000  # one figure, a row per multiplier
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["errors.png"]
    bad = subprocess.run(
        [sys.executable, "-m", "approxjax", "characterize", "booth7"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert bad.returncode == 1 and "known:" in bad.stderr


def test_lut_cli(tmp_path, monkeypatch):
    out = tmp_path / "mit7.npz"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "approxjax",
            "lut",
            "build",
            str(LUTS / "mitchell.c"),
            "--function",
            "mitchell_mul",
            "-m",
            "7",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    np.testing.assert_array_equal(ax.load_lut(out).lut, ax.mitchell(7).lut)
    info = subprocess.run(
        [sys.executable, "-m", "approxjax", "lut", "info", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert "mitchell_mul" in info.stdout and "source_hash" in info.stdout


def test_catalog_multipliers_run_in_dot_general(rng):
    a = rng.standard_normal((9, 13)).astype(np.float32)
    b = rng.standard_normal((13, 5)).astype(np.float32)
    dn = (((1,), (0,)), ((), ()))
    for name in ("mitchell7", "mbm7", "drum7", "alm_soa7", "mbm7:lsb=1:trunc=1"):
        mult = ax.get(name)
        got = ax.dot_general(a, b, dn, multiplier=mult)
        np.testing.assert_array_equal(
            bits(got), bits(ref.sequential_dot_general(a, b, dn, mult.lut))
        )


def test_lut_file_errors_are_clean(tmp_path):
    good = ax.save_lut(ax.mbm(3), tmp_path / "good")
    with np.load(good) as data:
        table, meta = data["lut"], json.loads(str(data["metadata"]))
    listed = tmp_path / "list.npz"
    np.savez(listed, lut=table, metadata=np.array(json.dumps([1, 2])))
    with pytest.raises(ValueError, match="metadata must be a JSON object; got list"):
        ax.load_lut(listed)
    unchecked = tmp_path / "unchecked.npz"
    meta.pop("table_sha256")
    np.savez(unchecked, lut=table, metadata=np.array(json.dumps(meta)))
    with pytest.raises(ValueError, match="no table_sha256 checksum"):
        ax.load_lut(unchecked)
    folder = tmp_path / "MBM_7.bin"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        ax.load_approxtrain(folder)
    with pytest.raises(ValueError, match="writes one table; .* is a stack of 2"):
        ax.save_approxtrain(ax.stack([ax.mbm(3), ax.mitchell(3)]), tmp_path / "S_3.bin")


_BAD_MODELS = {
    "segfault": (
        "if (a > 1.5f && b > 1.75f) { volatile int* p = 0; *p = 1; }",
        "crashed (SIGSEGV)",
    ),
    "abort": ("if (a > 1.5f && b > 1.75f) abort();", "crashed (SIGABRT)"),
    "exit": ("if (a > 1.5f && b > 1.75f) exit(0);", "exited with status 0 before finishing"),
    "hang": ("while (a > 1.5f && b > 1.75f) {}", "did not finish within 3 s"),
}


@pytest.mark.parametrize("kind", sorted(_BAD_MODELS))
def test_c_models_that_crash_exit_or_hang_are_errors(kind, tmp_path, monkeypatch):
    """A C model runs in a child process: a crash, an abort, an exit or a hang
    is a ValueError naming the first input it did not finish, and the Python
    process lives on."""
    monkeypatch.setenv("APPROXJAX_CACHE_DIR", str(tmp_path / "cache"))
    body, said = _BAD_MODELS[kind]
    source = f"#include <stdlib.h>\nfloat bad(float a, float b) {{ {body} return a * b; }}\n"
    with pytest.raises(
        ValueError, match=rf"{re.escape(said)} at entry \[9, 13\] \(bad\(1\.5625, 1\.8125\)\)"
    ):
        ax.from_c(source, "bad", 4, timeout=3)


def test_corrupt_cached_model_is_rebuilt_and_missing_compiler_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("APPROXJAX_CACHE_DIR", str(tmp_path))
    src = "float good(float a, float b) { return a * b; }"
    first = ax.from_c(src, "good", 3, validate=False)
    (built,) = tmp_path.glob("*.model")
    built.write_bytes(b"\x7fELF garbage")  # a corrupt cached build
    again = ax.from_c(src, "good", 3, validate=False)
    np.testing.assert_array_equal(first.lut, again.lut)
    assert built.read_bytes() != b"\x7fELF garbage"
    monkeypatch.setenv("CC", "no-such-compiler-here")
    with pytest.raises(ValueError, match="CC='no-such-compiler-here' names a compiler"):
        ax.from_c("float other(float a, float b) { return a; }", "other", 3)
