"""The experiment runner behind ``approxjax sweep``, for use from Python.

``run_sweep(SweepConfig(...))`` trains (or evaluates, or fine-tunes) a
float32 baseline and every multiplier and returns the results dict that
``results.json`` holds; ``format_results`` prints its table.
"""

from approxjax._src.runner.config import ConfigError, SweepConfig
from approxjax._src.runner.mesh import parse_mesh
from approxjax._src.runner.outputs import format_results, plot_curves, write_outputs
from approxjax._src.runner.specs import load_arithmetic, load_multiplier
from approxjax._src.runner.sweep import run_sweep

__all__ = [
    "ConfigError",
    "SweepConfig",
    "format_results",
    "load_arithmetic",
    "load_multiplier",
    "parse_mesh",
    "plot_curves",
    "run_sweep",
    "write_outputs",
]
