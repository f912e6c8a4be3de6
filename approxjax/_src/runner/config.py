"""The sweep's configuration, and its checks: every value is checked before
anything is trained, and a bad one gives one message that names it."""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODES = ("train", "inference", "finetune")
# How GEMMs run (approxjax.dot_general's method=, and "fast": native, with a
# low-rank surrogate standing in for each table without exact factors).
METHODS = ("auto", "lut", "native", "fast")
GEMMS = ("forward", "input_grad", "weight_grad")
ON_EXISTING = ("refuse", "move")
# The --multipliers options (parsed by approxjax._src.runner.specs.load_arithmetic).
SPEC_HELP = (
    "MULTIPLIER[+FORMAT][+acc=FORMAT][+lhs=F][+rhs=F][+product=F][+adder=loaK]"
    "[+rounding=R][+acc_rounding=R], MULTIPLIER 'exact' for IEEE products"
)

# An integer multiplier spec's +options (parsed by approxjax._src.runner.specs).
COST_KEYS = ("power_mW", "area_um2", "delay_ns")
INTEGER_OPTIONS = (
    "grad=ste|quantized|lut, calib=minmax|percentile|mse|learned, percentile=P, "
    "init=minmax|percentile|mse, rank=R, "
    "smooth=S, asym, per_tensor, " + ", ".join(f"{k}=X" for k in COST_KEYS)
)


def integer_defaults(bits: int) -> list[str]:
    """The integer designs a ``--quantize`` sweep runs when no multipliers are
    named (above 12 bits as function models: slower, benchmarks/RESULTS.md)."""
    half = max(bits // 2, 1)
    return ["mitchell", "kulkarni", f"drum_k{half}", f"truncated_k{half}"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it."""


@dataclasses.dataclass
class SweepConfig:
    """What a sweep runs (the command line's flags, one field each)."""

    model: str = "cnn"
    time_steps: int = 8  # of a spiking model (scnn)
    dataset: str = "digits"
    multipliers: Sequence[str] = ("truncated7", "mitchell7", "mbm7", "drum7")
    formats: Sequence[str] = ()  # operand formats run with IEEE products (exact+FORMAT)
    quantize: str | None = None  # int8, uint4, ...: integer runs' codes, plus an exact baseline
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    mode: str = "train"  # train | inference | finetune
    finetune_epochs: int = 1
    approximate: Sequence[str] = GEMMS
    exact_layers: Sequence[str] = ()
    first_exact: bool = False
    last_exact: bool = False
    data_dir: str | None = None
    data_file: str | None = None  # text: the text file; pairs: the tab-separated pairs
    beam: int = 1  # a translator's decoding for BLEU: 1 greedy, K > 1 beam search
    image_size: int | None = None  # imagefolder (224) / coco (64; synthetic 32): image side
    init_params: str | None = None  # .npz or orbax checkpoint of float32 parameters
    train_limit: int | None = None
    out_dir: str = "approxjax-results"
    resume: bool = False
    on_existing: str = "refuse"  # refuse | move (an output folder holding another run)
    mesh: str = "auto"  # "auto", "none", or e.g. "sweep=4,data=2"
    method: str = "auto"  # auto | lut | native | fast
    surrogate_rank: int = 2  # the rank of --method fast's surrogates


# Fields that do not change what a run computes: a resumed run may differ in them.
PLACEMENT_FIELDS = ("out_dir", "resume", "on_existing")


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1; got {value!r}")


def check_writable(out_dir: str) -> None:
    """Raises ConfigError unless ``out_dir`` can be created and written."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out_dir!r} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".approxjax-write-test"):
            pass
    except OSError as e:
        raise ConfigError(f"--out {out_dir!r} is not writable: {e.strerror or e}") from e


def validate(cfg: SweepConfig) -> None:
    """Checks every field that can be checked without loading anything.

    Raises:
      ConfigError: naming the first bad value and what was expected.
    """
    _positive_int("--epochs", cfg.epochs)
    _positive_int("--batch-size", cfg.batch_size)
    _positive_int("--time-steps", cfg.time_steps)
    _positive_int("--beam", cfg.beam)
    _positive_int("--image-size", cfg.image_size, allow_none=True)
    for model, dataset in (("translator", "pairs"), ("detector", "coco")):
        if (cfg.model == model) != (cfg.dataset == dataset):
            raise ConfigError(
                f"--model {model} goes with --dataset {dataset} (and {dataset} with {model}); "
                f"got --model {cfg.model} --dataset {cfg.dataset}"
            )
    _positive_int("--train-limit", cfg.train_limit, allow_none=True)
    if cfg.mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}; got {cfg.mode!r}")
    if cfg.mode == "finetune":
        _positive_int("--finetune-epochs", cfg.finetune_epochs)
    elif (
        isinstance(cfg.finetune_epochs, bool)
        or not isinstance(cfg.finetune_epochs, int)
        or (cfg.finetune_epochs < 0)
    ):
        raise ConfigError(f"--finetune-epochs must be an integer >= 0; got {cfg.finetune_epochs!r}")
    if not isinstance(cfg.learning_rate, (int, float)) or not cfg.learning_rate > 0:
        raise ConfigError(f"--learning-rate must be > 0; got {cfg.learning_rate!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"--seed must be an integer >= 0; got {cfg.seed!r}")
    specs = [s.strip() for s in cfg.multipliers]
    formats = [f.strip() for f in cfg.formats]
    if (not specs and not formats) or any(not s for s in specs):
        raise ConfigError(
            f"--multipliers needs one or more comma-separated multipliers; got {','.join(specs)!r}"
        )
    if any(not f for f in formats):
        raise ConfigError(
            f"--formats needs comma-separated format names; got {','.join(formats)!r}"
        )
    for flag, names in (("--multipliers", specs), ("--formats", formats)):
        seen = set()
        for s in names:
            if s in seen:
                raise ConfigError(f"{flag} names {s!r} twice")
            seen.add(s)
    from approxjax._src.arithmetic.formats import get

    for f in formats:
        try:
            get(f)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--formats {f!r}: {e}") from e
    if cfg.quantize is not None:
        from approxjax._src.runner.specs import parse_quantize

        try:
            parse_quantize(cfg.quantize)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    approx = list(cfg.approximate)
    bad = [g for g in approx if g not in GEMMS]
    if bad or "forward" not in approx or len(set(approx)) != len(approx):
        raise ConfigError(
            f"--approximate takes forward (required), input_grad and weight_grad, each once; "
            f"got {','.join(approx)!r}"
        )
    for pattern in cfg.exact_layers:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"--exact-layer {pattern!r} is not a regular expression: {e}") from e
    if cfg.method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {cfg.method!r}")
    if (
        isinstance(cfg.surrogate_rank, bool)
        or not isinstance(cfg.surrogate_rank, int)
        or not 1 <= cfg.surrogate_rank <= 16
    ):
        raise ConfigError(
            f"--surrogate-rank must be an integer from 1 to 16; got {cfg.surrogate_rank!r}"
        )
    if cfg.on_existing not in ON_EXISTING:
        raise ConfigError(
            f"--on-existing must be one of {', '.join(ON_EXISTING)}; got {cfg.on_existing!r}"
        )
    if cfg.init_params is not None and not os.path.exists(cfg.init_params):
        raise ConfigError(f"--init-params {cfg.init_params!r} does not exist")
    if cfg.data_dir is not None and not os.path.exists(cfg.data_dir):
        raise ConfigError(f"--data-dir {cfg.data_dir!r} does not exist")
    if cfg.data_file is not None and not os.path.isfile(cfg.data_file):
        raise ConfigError(f"--data-file {cfg.data_file!r} is not a file")
    if cfg.out_dir:
        check_writable(cfg.out_dir)


def fingerprint_fields(cfg: SweepConfig) -> dict[str, Any]:
    """The fields that define what a run computes (all but the placement ones)."""
    out = dataclasses.asdict(cfg)
    for name in PLACEMENT_FIELDS:
        out.pop(name, None)
    for key, value in out.items():
        if isinstance(value, tuple):
            out[key] = list(value)
    return out
