"""Helpers shared by the tests."""

import numpy as np


def random_nonzero(rng, shape, dtype=np.float32, scale=1.0):
    """Standard-normal values with no zeros (|x| >= 1e-3 * scale)."""
    x = rng.standard_normal(shape) * scale
    x = np.where(np.abs(x) < 1e-3 * scale, np.copysign(1e-3 * scale, x), x)
    return x.astype(dtype)


def bits(x):
    """float32 bit patterns, for bit-exact comparison (NaNs included)."""
    return np.asarray(x, dtype=np.float32).view(np.uint32)
