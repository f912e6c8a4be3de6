"""Parameters trained elsewhere (``approxjax sweep --init-params FILE``).

Two forms: an ``.npz`` whose keys are the tree paths of the model's
parameters joined by ``/`` (``params/Conv_0/kernel``, as :func:`save_params`
writes them), or an orbax checkpoint folder holding the parameter tree (a
sweep's own float32 checkpoint ``checkpoints/float32/epoch_N``, whose
``params`` are taken, also works). Either must match the model's parameter
tree leaf for leaf: same paths, same shapes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from approxjax._src.runner.config import ConfigError


def _key(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flatten(tree: Any) -> dict[str, Any]:
    """``{"params/Conv_0/kernel": leaf, ...}``: the tree's leaves by path."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key(e) for e in path): leaf for path, leaf in leaves}


def save_params(params: Any, path: str | Path) -> Path:
    """Writes ``params`` as an ``.npz`` of its leaves by path (see the module
    docstring); returns the path."""
    path = Path(path)
    np.savez(path, **{k: np.asarray(v) for k, v in flatten(params).items()})
    return path


def fingerprint(params: Any) -> str:
    """A short hash of a parameter tree's paths, shapes and values."""
    digest = hashlib.sha256()
    for key, leaf in sorted(flatten(params).items()):
        a = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{key}{a.shape}{a.dtype.str}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()[:16]


def _read(path: Path) -> dict[str, Any]:
    if path.is_file() and path.suffix == ".npz":
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise ConfigError(f"--init-params {str(path)!r} is not a readable .npz: {e}") from e
    if path.is_dir():
        import orbax.checkpoint as ocp

        try:
            tree = ocp.StandardCheckpointer().restore(path.resolve())
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds; say which folder
            raise ConfigError(
                f"--init-params {str(path)!r} is not an orbax checkpoint: {type(e).__name__}: {e}"
            ) from e
        if isinstance(tree, dict) and "params" in tree and "opt_state" in tree:
            tree = tree["params"]  # a sweep's own checkpoint: parameters and optimizer state
        return flatten(tree)
    raise ConfigError(
        f"--init-params {str(path)!r} must be an .npz file or an orbax checkpoint folder"
    )


def load_params(path: str | Path, like: Any) -> Any:
    """The parameters in ``path``, in the tree of ``like`` (the model's own
    initial parameters), each cast to ``like``'s dtype.

    Raises:
      ConfigError: no such file, an unreadable one, or a tree that does not
        match ``like`` (naming the missing, extra or misshapen leaves).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--init-params {str(path)!r} does not exist")
    found = _read(path)
    wanted = flatten(like)
    missing = [k for k in wanted if k not in found]
    extra = [k for k in found if k not in wanted]
    if missing or extra:
        raise ConfigError(
            f"--init-params {str(path)!r} does not hold this model's parameters: "
            + "; ".join(
                f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for what, keys in (("missing", missing), ("not in the model", extra))
                if keys
            )
        )
    for key, leaf in wanted.items():
        if tuple(np.shape(found[key])) != tuple(np.shape(leaf)):
            raise ConfigError(
                f"--init-params {str(path)!r}: {key} has shape {tuple(np.shape(found[key]))}; "
                f"the model's is {tuple(np.shape(leaf))}"
            )
    treedef = jax.tree_util.tree_structure(like)
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(found[k], jnp.asarray(v).dtype) for k, v in wanted.items()]
    )
