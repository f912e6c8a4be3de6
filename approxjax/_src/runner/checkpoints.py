"""Checkpoints that cannot be resumed into the wrong run.

A sweep's output folder holds ``run.json`` (what the run computes: its
configuration and the identity of its data), and per group of multipliers a
folder with one orbax checkpoint per epoch and ``state.json`` (the group's
identity, the last finished epoch and its history), each written atomically
after the checkpoint it describes. Resuming compares the identities field by
field and refuses on any difference, naming it; a new run refuses a folder
that holds another run's results unless told to move them aside.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from approxjax._src.atomic import write_text_atomically
from approxjax._src.runner.config import ConfigError

RUN_FILE = "run.json"
STATE_FILE = "state.json"
SCHEMA = "approxjax-run/1"


def data_fingerprint(data) -> dict[str, Any]:
    """What identifies a dataset: its name, sizes and a hash of its contents."""
    return data.fingerprint()


def table_fingerprint(multiplier) -> str:
    """A short hash of a multiplier's table (or a stack's tables); an
    arithmetic's multiplier's, ``"none"`` for IEEE products, and an integer
    function model's source hash."""
    multiplier = getattr(multiplier, "multiplier", multiplier)
    if multiplier is None:
        return "none"
    if getattr(multiplier, "function", None) is not None:
        return multiplier.function.digest[:16]
    table = getattr(multiplier, "lut", None)
    table = (
        np.asarray(multiplier.table, np.int32) if table is None else np.asarray(table, np.float32)
    )
    return hashlib.sha256(table.tobytes()).hexdigest()[:16]


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key, "<absent>"), wanted.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e} (a corrupt or foreign file)") from e


def prepare_output(out: Path, identity: dict[str, Any], resume: bool, on_existing: str) -> None:
    """Makes ``out`` ready for a run with ``identity``.

    A new run needs an empty folder (or one without another run's files); with
    ``on_existing="move"`` another run's files are moved aside first. A resumed
    run needs the same identity in ``run.json``.

    Raises:
      ConfigError: the folder holds another run (naming how to proceed), or a
        resumed run's identity differs (naming the fields).
    """
    run_file = out / RUN_FILE
    others = [p.name for p in (out / "results.json", out / "checkpoints", run_file) if p.exists()]
    if resume:
        if run_file.exists():
            saved = _read_json(run_file)
            if not isinstance(saved, dict) or saved.get("schema") != SCHEMA:
                raise ConfigError(f"{run_file} is not an approxjax run file ({SCHEMA})")
            diff = _differences(saved.get("identity", {}), identity)
            if diff:
                raise ConfigError(
                    f"cannot resume the run in {out}: it was made with other settings ("
                    + "; ".join(diff)
                    + "). Resume with the same settings, or start a new run with another --out"
                )
            return
        if others:
            raise ConfigError(
                f"cannot resume the run in {out}: it holds {', '.join(others)} but no "
                f"{RUN_FILE} (written by an older approxjax?); start a new run with another --out"
            )
    elif others:
        if on_existing != "move":
            raise ConfigError(
                f"{out} holds another run's results ({', '.join(others)}): pass --resume to "
                "continue that run, --out DIR to write elsewhere, or --on-existing move to move "
                "them aside"
            )
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = out.with_name(f"{out.name}.old-{stamp}")
        shutil.move(str(out), str(aside))
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(
        run_file, json.dumps({"schema": SCHEMA, "identity": identity}, indent=2, default=str)
    )


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


class GroupCheckpoint:
    """The checkpoints of one group (float32, or a stack of multipliers)."""

    def __init__(self, folder: Path, identity: dict[str, Any]):
        self.folder = folder
        self.identity = identity

    def restore(self, template: dict[str, Any]) -> tuple[int, Any, dict] | None:
        """(epoch, state, history) of the last finished epoch, or None if none.

        Raises:
          ConfigError: the saved group is another one (naming the fields), or
            its state file is corrupt.
        """
        path = self.folder / STATE_FILE
        if not path.exists():
            return None
        saved = _read_json(path)
        if not isinstance(saved, dict) or "identity" not in saved or "epoch" not in saved:
            raise ConfigError(f"{path} is not an approxjax checkpoint state file")
        diff = _differences(saved["identity"], self.identity)
        if diff:
            raise ConfigError(
                f"cannot resume from {self.folder}: its checkpoint was made with other settings ("
                + "; ".join(diff)
                + ")"
            )
        epoch = int(saved["epoch"])
        try:
            state = _checkpointer().restore((self.folder / f"epoch_{epoch}").resolve(), template)
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds; say which file
            raise ConfigError(
                f"cannot restore {self.folder / f'epoch_{epoch}'}: {type(e).__name__}: {e}"
            ) from e
        return epoch, state, saved.get("history", {})

    def save(self, epoch: int, state: Any, history: dict) -> None:
        """Writes the checkpoint of ``epoch``, then the state file that names it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ck = _checkpointer()
        ck.save((self.folder / f"epoch_{epoch}").resolve(), state, force=True)
        ck.wait_until_finished()
        write_text_atomically(
            self.folder / STATE_FILE,
            json.dumps(
                {"identity": self.identity, "epoch": epoch, "history": history}, default=str
            ),
        )
