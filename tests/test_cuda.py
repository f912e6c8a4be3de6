"""The CUDA extension: built whenever nvcc is there; on a GPU, bit-identical to
the CPU kernels (run with JAX_PLATFORMS=cuda,cpu so both backends are up).

The rest of the suite runs unchanged on the GPU with JAX_PLATFORMS=cuda.
"""

from __future__ import annotations

import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import bits, random_nonzero

import approxjax as ax
from approxjax._src.kernels import ffi as _ffi

DN = (((1,), (0,)), ((), ()))


def _nvcc() -> str | None:
    """nvcc where the CMake AUTO switch looks for it."""
    found = shutil.which("nvcc")
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if not found and home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            found = os.path.join(home, "bin", "nvcc")
    candidates = glob.glob("/usr/local/cuda/bin/nvcc") + glob.glob("/usr/local/cuda-*/bin/nvcc")
    return found or (candidates[0] if candidates else None)


def _backends() -> set[str]:
    out = set()
    for name in ("cpu", "gpu"):
        try:
            jax.devices(name)
            out.add(name)
        except RuntimeError:
            pass
    return out


needs_gpu = pytest.mark.skipif("gpu" not in _backends(), reason="needs a GPU")
needs_gpu_and_cpu = pytest.mark.skipif(
    _backends() != {"cpu", "gpu"}, reason="needs a GPU and the CPU backend (JAX_PLATFORMS=cuda,cpu)"
)


@pytest.mark.skipif(
    _nvcc() is None or os.environ.get("APPROXJAX_CUDA", "AUTO").upper() == "OFF",
    reason="no nvcc on this machine (or the build was asked for CPU only)",
)
def test_cuda_extension_is_built_where_nvcc_is():
    assert ax.cuda_available()
    targets = set(_ffi._approxjax_cuda.registrations())
    assert targets == {
        "approxjax_gemm",
        "approxjax_multiply",
        "approxjax_int_gemm",
        "approxjax_prior_art_gemm",
    }
    # It imports and answers without a GPU: as many devices as JAX sees.
    gpus = len(jax.devices("gpu")) if "gpu" in _backends() else 0
    assert _ffi._approxjax_cuda.device_count() == gpus


def _on(device, fn, *args):
    args = jax.device_put(args, device)
    return np.asarray(jax.jit(fn)(*args))


def _special_operands(rng, shape):
    x = random_nonzero(rng, shape)
    flat = x.reshape(-1)
    specials = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 3e38, -3e38, 1e-38], np.float32
    )
    where = rng.choice(flat.size, size=min(len(specials), flat.size // 8), replace=False)
    flat[where] = specials[: len(where)]
    return x


@needs_gpu_and_cpu
@pytest.mark.parametrize("m", [0, 3, 7, 10])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 17, 3), (70, 33, 129), (128, 300, 64)])
def test_gemm_gpu_equals_cpu_bit_for_bit(m, shape):
    rng = np.random.default_rng(m * 1000 + sum(shape))
    mm, k, n = shape
    a = random_nonzero(rng, (mm, k))
    b = random_nonzero(rng, (k, n)) * np.float32(2.0**-60)  # some products underflow
    mult = ax.mbm(m)

    def f(a, b):
        return ax.dot_general(a, b, DN, multiplier=mult)

    cpu = _on(jax.devices("cpu")[0], f, a, b)
    gpu = _on(jax.devices("gpu")[0], f, a, b)
    np.testing.assert_array_equal(bits(gpu), bits(cpu))


@needs_gpu_and_cpu
@pytest.mark.parametrize("m", [1, 7, 12])
def test_special_values_and_gradients_gpu_equals_cpu(m):
    rng = np.random.default_rng(m)
    a, b = _special_operands(rng, (40, 24)), _special_operands(rng, (24, 72))
    mult = ax.mitchell(m)

    def f(a, b):
        out, vjp = jax.vjp(lambda a, b: ax.dot_general(a, b, DN, multiplier=mult), a, b)
        return (out, *vjp(jnp.ones_like(out)))

    for x, y in zip(
        _on(jax.devices("cpu")[0], f, a, b), _on(jax.devices("gpu")[0], f, a, b), strict=True
    ):
        np.testing.assert_array_equal(bits(y), bits(x))


@needs_gpu_and_cpu
def test_vmapped_sweep_and_transposes_gpu_equals_cpu():
    rng = np.random.default_rng(3)
    a, b = random_nonzero(rng, (2, 33, 65)), random_nonzero(rng, (2, 80, 65))
    stack = ax.stack([ax.mitchell(7), ax.truncated(7), ax.drum(7)])

    def f(a, b, s):
        sweep = jax.vmap(
            lambda mu: ax.dot_general(a, b, (((2,), (2,)), ((0,), (0,))), multiplier=mu)
        )
        return sweep(s)

    cpu = _on(jax.devices("cpu")[0], f, a, b, stack)
    gpu = _on(jax.devices("gpu")[0], f, a, b, stack)
    np.testing.assert_array_equal(bits(gpu), bits(cpu))


@needs_gpu_and_cpu
def test_multiply_gpu_equals_cpu():
    rng = np.random.default_rng(4)
    a, b = _special_operands(rng, (1000,)), _special_operands(rng, (1000,))
    mult = ax.alm_soa(5)
    cpu = _on(jax.devices("cpu")[0], lambda a, b: ax.multiply(a, b, mult), a, b)
    gpu = _on(jax.devices("gpu")[0], lambda a, b: ax.multiply(a, b, mult), a, b)
    np.testing.assert_array_equal(bits(gpu), bits(cpu))


@needs_gpu
def test_prior_art_kernel_equals_ours():
    rng = np.random.default_rng(5)
    a, b = random_nonzero(rng, (100, 70)), random_nonzero(rng, (70, 90))
    mult = ax.mitchell(7)
    out = jax.ShapeDtypeStruct((1, 100, 90), jnp.float32)
    prior = jax.ffi.ffi_call("approxjax_prior_art_gemm", out)(
        a[None],
        b[None],
        mult.lut[None],
        mult.facts[None],
        transpose_lhs=False,
        transpose_rhs=False,
        options=ax.KernelOptions().attribute(),
    )[0]
    ours = ax.dot_general(a, b, DN, multiplier=mult)
    np.testing.assert_array_equal(bits(prior), bits(ours))


@needs_gpu_and_cpu
@pytest.mark.parametrize(
    "shape,m",
    [((64, 9000, 48), 7), ((8, 12300, 8), 5), ((600, 520, 700), 12), ((256, 4100, 300), 12)],
)
def test_long_sums_and_large_tables_gpu_equals_cpu(shape, m):
    """Sum blocks (K > 4096: fixed blocks of 4096 added in order) and m = 12
    (a 64 MiB table read from global memory) on large shapes."""
    rng = np.random.default_rng(sum(shape) + m)
    mm, k, n = shape
    a, b = random_nonzero(rng, (mm, k)), random_nonzero(rng, (k, n))
    mult = ax.truncated(m) if m == 12 else ax.mitchell(m)

    def f(a, b):
        return ax.dot_general(a, b, DN, multiplier=mult)

    cpu = _on(jax.devices("cpu")[0], f, a, b)
    gpu = _on(jax.devices("gpu")[0], f, a, b)
    np.testing.assert_array_equal(bits(gpu), bits(cpu))


@needs_gpu
def test_checked_launches_give_the_same_bits():
    """KernelOptions(check=True) synchronises and checks after each launch."""
    rng = np.random.default_rng(6)
    a, b = random_nonzero(rng, (130, 70)), random_nonzero(rng, (70, 90))
    mult = ax.mitchell(7)
    plain = ax.dot_general(a, b, DN, multiplier=mult)
    checked = ax.dot_general(a, b, DN, multiplier=mult, options=ax.KernelOptions(check=True))
    np.testing.assert_array_equal(bits(checked), bits(plain))


# --- integer multipliers -------------------------------------------------------


@needs_gpu_and_cpu
@pytest.mark.parametrize(
    "mult, shape",
    [
        (ax.integer.mitchell(8), (70, 33, 129)),
        (ax.integer.exact(8, signed=False), (5, 300, 17)),
        (ax.integer.drum(10, 4), (64, 100, 48)),
        (ax.integer.kulkarni((8, 4)), (1, 1, 1)),
    ],
)
def test_integer_gemm_gpu_equals_cpu(mult, shape):
    rng = np.random.default_rng(sum(shape))
    mm, k, n = shape
    (lo_a, hi_a), (lo_b, hi_b) = mult.code_range(0), mult.code_range(1)
    a = rng.integers(lo_a, hi_a + 1, (mm, k)).astype(np.int16)
    b = rng.integers(lo_b, hi_b + 1, (k, n)).astype(np.int16)

    def f(a, b):
        return ax.dot_general(a, b, DN, multiplier=mult)

    cpu = _on(jax.devices("cpu")[0], f, a, b)
    gpu = _on(jax.devices("gpu")[0], f, a, b)
    np.testing.assert_array_equal(np.asarray(gpu), np.asarray(cpu))


@needs_gpu_and_cpu
def test_integer_sweep_and_quantized_training_gpu_equals_cpu():
    rng = np.random.default_rng(5)
    stack = ax.stack([ax.integer.mitchell(8), ax.integer.drum(8, 4), ax.integer.exact(8)])
    a = rng.integers(-128, 128, (3, 40, 70)).astype(np.int8)
    b = rng.integers(-128, 128, (3, 70, 24)).astype(np.int8)

    def sweep(a, b, s):
        dn = (((2,), (1,)), ((0,), (0,)))
        return jax.vmap(lambda m: ax.dot_general(a, b, dn, multiplier=m))(s)

    cpu = _on(jax.devices("cpu")[0], sweep, a, b, stack)
    gpu = _on(jax.devices("gpu")[0], sweep, a, b, stack)
    np.testing.assert_array_equal(np.asarray(gpu), np.asarray(cpu))
    x = rng.standard_normal((32, 20)).astype(np.float32)
    w = rng.standard_normal((20, 6)).astype(np.float32)
    q = ax.Quantized(ax.integer.drum(8, 4), gradient="quantized")

    def step(x, w):
        return jax.value_and_grad(lambda w: ax.dot_general(x, w, DN, multiplier=q).sum())(w)

    def run(device):
        return [np.asarray(v) for v in jax.jit(step)(*jax.device_put((x, w), device))]

    for c, g in zip(run(jax.devices("cpu")[0]), run(jax.devices("gpu")[0]), strict=True):
        np.testing.assert_allclose(g, c, rtol=1e-6, atol=1e-6)


@needs_gpu
def test_integer_gemm_gpu_errors():
    mult = ax.integer.mitchell(8)
    f = jax.jit(lambda a, b: ax.dot_general(a, b, DN, multiplier=mult))
    with pytest.raises(Exception, match="outside the multiplier's code range"):
        f(jnp.ones((4, 5), jnp.int16), jnp.full((5, 2), 300, jnp.int16)).block_until_ready()
    wide = ax.integer.exact(14)
    with pytest.raises(NotImplementedError, match="run with JAX_PLATFORMS=cpu"):
        ax.dot_general(np.ones((2, 3), np.int16), np.ones((3, 2), np.int16), DN, multiplier=wide)
