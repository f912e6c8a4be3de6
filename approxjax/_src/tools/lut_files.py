"""Lookup-table files: approxjax's ``.npz`` format and ApproxTrain's ``.bin`` tables."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from approxjax._src.arithmetic.multipliers import Multiplier, check_mantissa_bits
from approxjax._src.atomic import write_atomically
from approxjax._src.version import __version__

FORMAT = "approxjax-lut/1"


def save_lut(multiplier: Multiplier, path: str | os.PathLike, **metadata: Any) -> Path:
    """Saves one multiplier as ``.npz``: its table and metadata.

    The metadata holds the name, m, the table's SHA-256, the multiplier's own
    metadata (source hash, parameters, ...), any keyword arguments given here,
    the approxjax version and the time.

    Returns:
      The path written (``.npz`` appended if missing).
    """
    if not isinstance(multiplier, Multiplier):
        raise TypeError(f"save_lut takes a Multiplier; got {type(multiplier).__name__}")
    if multiplier.batch_shape:
        raise ValueError("save_lut saves one multiplier; save the members of a stack one by one")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    table = np.asarray(multiplier.lut, np.float32)
    meta = {
        "format": FORMAT,
        "name": multiplier.name,
        "mantissa_bits": multiplier.mantissa_bits,
        "table_sha256": hashlib.sha256(table.tobytes()).hexdigest(),
        "approxjax_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **multiplier.metadata,
        **metadata,
    }
    write_atomically(
        path, lambda f: np.savez(f, lut=table, metadata=np.array(json.dumps(meta, default=str)))
    )
    return path


def load_lut(path: str | os.PathLike) -> Multiplier:
    """Loads a ``.npz`` table written by :func:`save_lut`, checking it completely.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a readable approxjax LUT file, or its table does not
        match its metadata (shape, dtype, m, checksum) or has invalid entries.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LUT file at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "lut" not in data or "metadata" not in data:
                raise ValueError(f"has entries {sorted(data.files)}, expected 'lut' and 'metadata'")
            table = data["lut"]
            meta = json.loads(str(data["metadata"]))
    except (OSError, zipfile.BadZipFile, ValueError, json.JSONDecodeError, EOFError) as e:
        raise ValueError(f"{path} is not a readable approxjax LUT file: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(
            f"{path}: its metadata must be a JSON object; got {type(meta).__name__} {meta!r:.80}"
        )
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    if table.dtype != np.float32:
        raise ValueError(f"{path}: table dtype is {table.dtype}, expected float32")
    m = meta.get("mantissa_bits")
    side = 1 << int(m) if isinstance(m, int) and 0 <= m <= 12 else None
    if side is None or table.shape != (side, side):
        raise ValueError(
            f"{path}: table shape {table.shape} does not match mantissa_bits={m!r} "
            "(expected (2**m, 2**m), 0 <= m <= 12)"
        )
    digest = hashlib.sha256(table.tobytes()).hexdigest()
    if "table_sha256" not in meta:
        raise ValueError(f"{path}: its metadata has no table_sha256 checksum (corrupt file?)")
    if meta["table_sha256"] != digest:
        raise ValueError(f"{path}: table checksum does not match its metadata (corrupt file?)")
    try:
        return Multiplier(table, name=meta.get("name"), metadata=meta)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


_APPROXTRAIN_NAME = re.compile(r"_(\d+)\.bin$")


def load_approxtrain(path: str | os.PathLike, m: int | None = None) -> Multiplier:
    """Reads an ApproxTrain lookup table (``MBM_7.bin``, ``MIT_5.bin``, ``ACC_7.bin``, ...).

    The file holds ``2**(2m)`` bytes indexed ``(i << m) | j``; in each byte bit 7
    is the carry (the product's exponent is one higher) and the low ``m`` bits
    are the top ``m`` fraction bits of the product: entry ``(1 + f / 2**m) *
    2**carry``. ``m`` is the file name's suffix unless given. Tables written
    by ApproxTrain's first releases, with one little-endian uint32 per entry
    (bit 31 the carry, bits 22.. the fraction), are recognised by their size.

    Raises:
      ValueError: m cannot be read from the name, or the file's size does not
        match m.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; an ApproxTrain table is a .bin file")
    if not path.is_file():
        raise FileNotFoundError(f"no ApproxTrain table at {path}")
    if m is None:
        found = _APPROXTRAIN_NAME.search(path.name)
        if not found:
            raise ValueError(
                f"cannot read m from the file name {path.name!r} (expected e.g. MBM_7.bin); pass m="
            )
        m = int(found.group(1))
    m = check_mantissa_bits(m)
    if m > 7:
        raise ValueError(f"ApproxTrain tables hold at most 7 mantissa bits; {path.name} says {m}")
    raw = path.read_bytes()
    n = 1 << (2 * m)
    if len(raw) == n:
        entries = np.frombuffer(raw, np.uint8).astype(np.uint32)
        carry = entries >> 7
        frac = entries & ((1 << m) - 1)
        if np.any(entries & ~np.uint32(0x80 | ((1 << m) - 1))):
            raise ValueError(f"{path}: bytes use bits outside the carry and {m} fraction bits")
    elif len(raw) == 4 * n:
        entries = np.frombuffer(raw, "<u4")
        carry = entries >> 31
        frac = (entries >> (23 - m)) & ((1 << m) - 1)
    else:
        raise ValueError(
            f"{path} has {len(raw)} bytes; an ApproxTrain table with m={m} has {n} "
            f"(or {4 * n} in the uint32 format)"
        )
    table = ((1.0 + frac / float(1 << m)) * 2.0**carry).reshape(1 << m, 1 << m)
    return Multiplier(
        table.astype(np.float32),
        name=f"approxtrain:{path.stem}",
        metadata={"source": "approxtrain", "path": str(path)},
    )


def save_approxtrain(multiplier: Multiplier, path: str | os.PathLike) -> Path:
    """Writes a table in ApproxTrain's byte format (for use with that tool).

    Raises:
      ValueError: m > 7, or an entry is not of the form ``(1 + f/2**m) * 2**c``
        with ``c`` in {0, 1} (the byte format cannot hold it).
    """
    if not isinstance(multiplier, Multiplier):
        raise TypeError(f"save_approxtrain takes a Multiplier; got {type(multiplier).__name__}")
    if multiplier.batch_shape:
        raise ValueError(
            f"save_approxtrain writes one table; {multiplier.name} is a stack of "
            f"{multiplier.batch_shape[0]}: save its members one by one"
        )
    m = multiplier.mantissa_bits
    if m > 7:
        raise ValueError(f"ApproxTrain's byte format holds m <= 7; got m={m}")
    table = np.asarray(multiplier.lut, np.float64)
    carry = (table >= 2).astype(np.int64)
    frac = (table / 2.0**carry - 1) * (1 << m)
    ok = (table >= 1) & (table < 4) & (frac == np.floor(frac))
    if not ok.all():
        i, j = (int(v) for v in np.argwhere(~ok)[0])
        raise ValueError(
            f"entry [{i}, {j}] = {table[i, j]!r} is not (1 + f/2**{m}) * 2**c with c in {{0, 1}}"
        )
    data = ((carry << 7) | frac.astype(np.int64)).astype(np.uint8).reshape(-1)
    path = Path(path)
    write_atomically(path, lambda f: f.write(data.tobytes()))
    return path
