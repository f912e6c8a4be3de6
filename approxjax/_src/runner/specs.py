"""Multipliers named on the command line: catalog names, LUT files, C models."""

from __future__ import annotations

from approxjax._src.arithmetic import catalog
from approxjax._src.arithmetic.multipliers import Multiplier


def load_multiplier(spec: str, m: int | None = None) -> Multiplier:
    """A multiplier from a spec: a catalog name (``mitchell7``, or ``mitchell``
    with ``m``), an ``.npz`` LUT file, an ApproxTrain ``.bin`` file, or
    ``model.c@function:m``.

    Raises:
      ValueError: an unknown name, or a malformed C model spec.
      FileNotFoundError: a LUT file or C model that does not exist.
    """
    from approxjax._src.tools import c_models, lut_files

    spec = spec.strip()
    if spec.endswith(".npz"):
        return lut_files.load_lut(spec)
    if spec.endswith(".bin"):
        return lut_files.load_approxtrain(spec)
    path, at, rest = spec.partition("@")
    if at and path.endswith((".c", ".cc", ".cpp", ".cxx")):
        function, _, bits = rest.partition(":")
        if not function or not bits.isdigit():
            raise ValueError(f"C model spec {spec!r} must be file.c@function:m (m an integer)")
        return c_models.from_c(path, function, int(bits))
    return catalog.get(spec, m)
