"""A short demonstration: one small network under several multipliers vs float32."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from approxjax._src.arithmetic import catalog
from approxjax._src.ops.dot_general import dot_general

_DN = (((1,), (0,)), ((), ()))


def _mlp(params, x, multiplier):
    for i, (w, b) in enumerate(params):
        x = dot_general(x, w, _DN, multiplier=multiplier) + b
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def run(mantissa_bits: Sequence[int] = (3, 5, 7), seed: int = 0) -> dict[str, float]:
    """Prints a 3-layer MLP's outputs and relative error under truncated(m) multipliers.

    Returns:
      The relative Frobenius error of the logits for each multiplier name.
    """
    rng = np.random.default_rng(seed)
    sizes = [64, 128, 64, 10]
    params = [
        (
            jnp.asarray(rng.standard_normal((i, o)) / np.sqrt(i), jnp.float32),
            jnp.asarray(rng.standard_normal(o) * 0.1, jnp.float32),
        )
        for i, o in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    x = jnp.asarray(rng.standard_normal((256, sizes[0])), jnp.float32)
    forward = jax.jit(_mlp)
    exact = forward(params, x, None)
    print(f"approxjax demo: MLP {'-'.join(map(str, sizes))}, batch {x.shape[0]}, seed {seed}")
    print(f"float32 logits of example 0: {np.array2string(np.asarray(exact[0]), precision=3)}")
    print(f"{'multiplier':<14} {'rel. error':>10} {'max |diff|':>11} {'argmax agrees':>14}")
    errors = {}
    for m in mantissa_bits:
        mult = catalog.truncated(m)
        out = forward(params, x, mult)
        rel = float(jnp.linalg.norm(out - exact) / jnp.linalg.norm(exact))
        agree = float(jnp.mean(jnp.argmax(out, -1) == jnp.argmax(exact, -1)))
        errors[mult.name] = rel
        print(
            f"{mult.name:<14} {rel:>10.2e} {float(jnp.max(jnp.abs(out - exact))):>11.2e} "
            f"{agree:>13.1%}"
        )
    return errors
