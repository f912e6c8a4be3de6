"""Bad input raises a clear exception before any kernel runs (or an FFI error from it)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import approxjax as ax
from approxjax._src.kernels import ffi as _ffi

DN = (((1,), (0,)), ((), ()))
A = np.ones((3, 4), np.float32)
B = np.ones((4, 5), np.float32)


@pytest.mark.parametrize("shape", [(3, 3), (4, 8), (4,), (2, 2, 3), (0, 0)])
def test_lut_shape(shape):
    with pytest.raises(ValueError, match=r"lut must have shape \(2\*\*m, 2\*\*m\).*got"):
        ax.Multiplier(np.ones(shape, np.float32))


def test_lut_too_large_m():
    with pytest.raises(ValueError, match="8192"):
        jax.eval_shape(lambda t: ax.Multiplier(t), jax.ShapeDtypeStruct((8192, 8192), jnp.float32))


@pytest.mark.parametrize(
    "table,kind",
    [
        (np.ones((2, 2), np.complex64), TypeError),
        (np.array([["a", "b"], ["c", "d"]]), TypeError),
        (np.ones((2, 2), bool), TypeError),
    ],
)
def test_lut_not_float32_convertible(table, kind):
    with pytest.raises(kind, match="lut must be a real array"):
        ax.Multiplier(table)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, -1.0, 1e39])
def test_lut_bad_entries(bad):
    table = np.ones((4, 4), np.float64)
    table[2, 1] = bad
    with pytest.raises(ValueError, match=r"finite and >= 0.*lut\[2, 1\]"):
        ax.Multiplier(table)


def test_negative_zero_entries_are_canonical():
    table = np.ones((2, 2), np.float32)
    table[0, 0] = -0.0
    lut = np.asarray(ax.Multiplier(table).lut)
    assert not np.signbit(lut[0, 0])


@pytest.mark.parametrize(
    "m,kind", [(13, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_mantissa_bits_out_of_range(m, kind):
    with pytest.raises(kind, match="mantissa bits m"):
        ax.truncated(m)


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.complex64, np.uint8])
def test_operand_dtypes(dtype):
    with pytest.raises(
        TypeError, match=f"lhs must be float32, bfloat16 or float16; got {np.dtype(dtype)}"
    ):
        ax.dot_general(A.astype(dtype), B, DN, multiplier=ax.truncated(3))


def test_float64_operands():
    with jax.enable_x64(True):
        with pytest.raises(TypeError, match="rhs must be .* got float64"):
            ax.dot_general(A, B.astype(np.float64), DN, multiplier=ax.truncated(3))


def test_mismatched_contracting_sizes():
    with pytest.raises(
        ValueError, match="contracting dimension sizes differ: lhs dimension 1 has size 4"
    ):
        ax.dot_general(A, np.ones((5, 5), np.float32), DN, multiplier=ax.truncated(3))


@pytest.mark.parametrize(
    "dn,match",
    [
        ("nonsense", "dimension_numbers must be"),
        ((((1,),), ((), ())), "dimension_numbers must be"),
        ((((2,), (0,)), ((), ())), "lhs dimension 2, but lhs has rank 2"),
        ((((1,), (0,)), ((1,), (1,))), "uses? a lhs dimension twice"),
        ((((1,), (0, 1)), ((), ())), "as many contracting dimensions"),
        ((((1,), (0,)), ((0,), ())), "as many batch dimensions"),
        ((((1,), (-1,)), ((), ())), "rhs dimension -1"),
    ],
)
def test_malformed_dimension_numbers(dn, match):
    with pytest.raises(ValueError, match=match):
        ax.dot_general(A, B, dn, multiplier=ax.truncated(3))


def test_bad_multiplier_arguments():
    with pytest.raises(TypeError, match="multiplier must be a Multiplier"):
        ax.dot_general(A, B, DN, multiplier=np.ones((2, 2)))
    with pytest.raises(TypeError, match="input_grad_multiplier must be"):
        ax.dot_general(A, B, DN, multiplier=ax.truncated(2), input_grad_multiplier="exact")
    with pytest.raises(ValueError, match="stack of multipliers"):
        ax.dot_general(A, B, DN, multiplier=ax.stack([ax.truncated(2), ax.truncated(2)]))
    with pytest.raises(ValueError, match="need an approximate forward multiplier"):
        ax.dot_general(A, B, DN, multiplier=None, weight_grad_multiplier=ax.truncated(2))


def test_stack_errors():
    with pytest.raises(ValueError, match="share one m"):
        ax.stack([ax.truncated(2), ax.truncated(3)])
    with pytest.raises(ValueError, match="at least one"):
        ax.stack([])


def test_traced_bad_table_is_an_ffi_error_not_a_crash():
    bad = jnp.full((4, 4), -1.0)

    @jax.jit
    def f(t):
        return ax.dot_general(A, B, DN, multiplier=ax.Multiplier(t))

    if jax.default_backend() == "gpu":
        # The GPU checks tables on the device without stopping the stream: the
        # outputs of a bad table are NaN (documented), never silently finite.
        assert bool(jnp.all(jnp.isnan(f(bad))))
        return
    with pytest.raises(Exception, match="lut entries must be finite and >= \\+0.0"):
        jax.block_until_ready(f(bad))


def test_gpu_without_cuda_extension_says_how_to_build(monkeypatch):
    monkeypatch.setattr(_ffi, "_approxjax_cuda", None)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(RuntimeError, match="APPROXJAX_CUDA=ON pip install"):
        ax.dot_general(A, B, DN, multiplier=ax.truncated(2))


def test_traced_and_concrete_negative_zero_entries_agree():
    """-0.0 in a table is +0.0 whether the table is concrete or traced (it
    used to be canonicalised in one case and rejected in the other)."""
    table = np.asarray(ax.mitchell(2).lut).copy()
    table[1, 2] = -0.0
    concrete = ax.dot_general(A, B, DN, multiplier=ax.Multiplier(table))
    traced = jax.jit(lambda t: ax.dot_general(A, B, DN, multiplier=ax.Multiplier(t)))(table)
    np.testing.assert_array_equal(np.asarray(concrete), np.asarray(traced))


def test_facts_of_another_table_are_refused():
    """A GEMM checks that the facts it is handed belong to its table."""
    a, b = ax.mitchell(4), ax.truncated(4)
    forged = ax.Multiplier._unchecked(a.lut, b.facts, 4, ("forged",))
    with pytest.raises(Exception, match="facts of table 0 do not belong to it"):
        jax.block_until_ready(ax.dot_general(A, B, DN, multiplier=forged))


def test_dimension_numbers_must_be_integers():
    with pytest.raises(ValueError, match="integer sequences"):
        ax.dot_general(A, B, (((1.5,), (0,)), ((), ())), multiplier=ax.mitchell(4))
    with pytest.raises(ValueError, match="integer sequences"):
        ax.dot_general(A, B, (((True,), (0,)), ((), ())), multiplier=ax.mitchell(4))


def test_bad_kernel_options():
    with pytest.raises(ValueError, match="gemm must be one of"):
        ax.KernelOptions(gemm="fast")
    with pytest.raises(TypeError, match="prepack must be a bool"):
        ax.KernelOptions(prepack=1)
    with pytest.raises(TypeError, match="options must be approxjax.KernelOptions"):
        ax.dot_general(A, B, DN, multiplier=ax.mitchell(4), options={"gemm": "tables"})


@pytest.mark.parametrize(
    "shapes, match",
    [
        (
            ((2, 4, 5), (3, 5, 6), (1, 16, 16), (2, 4, 6)),
            r"rhs shape \(3, 5, 6\) does not broadcast",
        ),
        (
            ((2, 4, 5), (2, 5, 6), (3, 16, 16), (2, 4, 6)),
            r"lut shape \(3, 16, 16\) does not broadcast",
        ),
        (((4, 5), (5, 6), (1, 16, 16), (4, 6)), "must have one rank >= 2"),
        (((4, 5), (4, 6), (16, 16), (4, 6)), "shapes do not chain"),
    ],
)
def test_kernel_checks_its_own_shapes(shapes, match):
    """The integer GEMM's handler refuses inconsistent shapes with an FFI
    error naming them (Python checks first; this is the kernel's own guard)."""
    if jax.default_backend() != "cpu":
        pytest.skip("the CPU handler's messages")
    ld, rd, td, od = shapes
    call = jax.ffi.ffi_call("approxjax_int_gemm", jax.ShapeDtypeStruct(od, jnp.int32))
    with pytest.raises(Exception, match=match):
        jax.block_until_ready(
            call(jnp.zeros(ld, jnp.uint16), jnp.zeros(rd, jnp.uint16), jnp.ones(td, jnp.int32),
                 variant=np.int64(0), gemm=np.int64(0), pairs=False, bytes=False,
                 huge_pages=False)
        )  # fmt: skip
