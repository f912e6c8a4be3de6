"""Helpers shared by the tests."""

import numpy as np
from hypothesis import strategies as st


def random_nonzero(rng, shape, dtype=np.float32, scale=1.0):
    """Standard-normal values with no zeros (|x| >= 1e-3 * scale)."""
    x = rng.standard_normal(shape) * scale
    x = np.where(np.abs(x) < 1e-3 * scale, np.copysign(1e-3 * scale, x), x)
    return x.astype(dtype)


VARIANTS = ["baseline", "avx2", "avx512"]


def kernel_options(variant):
    """KernelOptions for one CPU kernel variant, or a pytest skip where this
    CPU lacks it."""
    import pytest

    import approxjax as ax

    order = {"Baseline": 0, "Avx2": 1, "Avx512": 2}
    if VARIANTS.index(variant) > order[ax.cpu_kernel_variant()]:
        pytest.skip(f"this CPU has no {variant} kernels")
    return ax.KernelOptions(variant=variant)


def bits(x):
    """float32 bit patterns, for bit-exact comparison (NaNs included)."""
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def train_step(model, opt):
    """A plain Flax + optax training step under ``approxjax.using(mult)``:
    ``step(params, opt_state, x, y, mult) -> (params, opt_state, loss, logits)``."""
    import jax
    import optax

    import approxjax as ax

    def step(params, opt_state, xb, yb, mult):
        def loss_fn(p):
            with ax.using(mult):
                logits = model.apply(p, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, logits

    return step


def plan(
    lhs_shape, rhs_shape, mult, *, transpose=(False, False), options=None, threads=2, conv=False
):
    """The CPU planner's description of a GEMM of (G, M, K) x (G, K, N)
    (transposed storage with ``transpose``) under ``mult`` (a stack: S
    members per operand pair)."""
    import approxjax as ax
    from approxjax._src.kernels import ffi

    return ffi.cpu_plan(
        lhs_shape,
        rhs_shape,
        np.asarray(mult.facts),
        transpose_lhs=transpose[0],
        transpose_rhs=transpose[1],
        options=options or ax.KernelOptions(),
        threads=threads,
        conv=conv,
    )


@st.composite
def dot_problems(draw):
    """Random (lhs shape, rhs shape, dimension_numbers) with permuted dimensions."""
    nb = draw(st.integers(0, 2))
    nc = draw(st.integers(0, 2))
    nlf = draw(st.integers(0, 2))
    nrf = draw(st.integers(0, 2))
    size = st.integers(1, 6)
    batch = [draw(size) for _ in range(nb)]
    contract = [draw(size) for _ in range(nc)]
    lfree = [draw(size) for _ in range(nlf)]
    rfree = [draw(size) for _ in range(nrf)]
    lhs_roles = [("b", i) for i in range(nb)] + [("c", i) for i in range(nc)]
    lhs_roles += [("f", i) for i in range(nlf)]
    rhs_roles = [("b", i) for i in range(nb)] + [("c", i) for i in range(nc)]
    rhs_roles += [("f", i) for i in range(nrf)]
    lhs_roles = draw(st.permutations(lhs_roles))
    rhs_roles = draw(st.permutations(rhs_roles))

    def shape(roles, free):
        sizes = {"b": batch, "c": contract, "f": free}
        return tuple(sizes[r][i] for r, i in roles)

    def where(roles, kind):
        return tuple(roles.index((kind, i)) for i in range(len({"b": batch, "c": contract}[kind])))

    dn = (
        (where(lhs_roles, "c"), where(rhs_roles, "c")),
        (where(lhs_roles, "b"), where(rhs_roles, "b")),
    )
    return shape(lhs_roles, lfree), shape(rhs_roles, rfree), dn
