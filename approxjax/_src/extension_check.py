"""A clear message when the compiled extension cannot be imported."""

from __future__ import annotations

from pathlib import Path


def check() -> None:
    """Raises ImportError with the fix when ``approxjax._approxjax_cpu`` is missing.

    The usual cause is running Python in the repository root: the source
    folder ``approxjax/`` then shadows the installed package and has no
    compiled extension next to it.
    """
    try:
        from approxjax import _approxjax_cpu  # noqa: F401
    except ImportError as e:
        here = Path(__file__).resolve().parents[1]
        source_tree = (here.parent / "pyproject.toml").is_file() and (
            here.parent / "xla_ffi"
        ).is_dir()
        if source_tree:
            raise ImportError(
                f"approxjax is being imported from its source tree ({here}), which shadows the "
                "installed package and has no compiled extension: run Python from another "
                "folder, or install approxjax in place with "
                "'pip install --no-build-isolation -e .'"
            ) from e
        raise ImportError(
            f"approxjax's compiled extension (_approxjax_cpu) is missing from {here}: "
            f"reinstall approxjax ({e})"
        ) from e
