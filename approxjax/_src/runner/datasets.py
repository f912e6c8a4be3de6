"""Offline datasets: nothing is downloaded, ever.

* ``digits``: the 8x8 handwritten digits bundled with approxjax (1,797 images,
  from scikit-learn's copy of the UCI set), split 1,437 / 360.
* ``mnist`` / ``fashion_mnist``: the standard IDX files (``train-images-idx3-ubyte``
  etc., optionally ``.gz``) in ``data_dir``; Fashion-MNIST is found without one
  where Debian's ``dataset-fashion-mnist`` installs it.
* ``cifar10``: the standard python batch files (``data_batch_1`` .. ``_5``,
  ``test_batch``) in ``data_dir`` (or its ``cifar-10-batches-py`` folder).
* ``text``: a character-level corpus (a text file; pydoc's topics by default).
* ``pairs``: sentence pairs for translation, a tab-separated file, or a
  synthetic task (:mod:`approxjax._src.runner.translation`).
* ``imagefolder``: one folder per class of JPEG/PNG images, streamed with
  augmentation (:mod:`approxjax._src.runner.image_folders`).
* ``coco``: COCO-format detection data, or synthetic shapes
  (:mod:`approxjax._src.runner.detection`).

Images come as float32 NHWC in [0, 1], labels as int32.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@dataclasses.dataclass
class Dataset:
    """A dataset held in memory, with the interface the runner reads every
    dataset through (a streamed one, :mod:`.image_folders`, has the same)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def train_size(self) -> int:
        return len(self.x_train)

    @property
    def test_size(self) -> int:
        return len(self.x_test)

    def train_batches(self, seed: int, batch_size: int, limit: int) -> Iterator:
        """``max(limit // batch_size, 1)`` batches of the first ``limit``
        training examples in an order shuffled with ``seed``."""
        order = np.random.default_rng(seed).permutation(limit)
        for i in range(max(limit // batch_size, 1)):
            idx = order[i * batch_size : (i + 1) * batch_size]
            yield self.x_train[idx], self.y_train[idx]

    def test_batches(self, batch_size: int) -> Iterator:
        for i in range(0, len(self.x_test), batch_size):
            yield self.x_test[i : i + batch_size], self.y_test[i : i + batch_size]

    def sample(self, count: int):
        """The first ``count`` training examples and labels (shapes for tracing)."""
        return self.x_train[:count], self.y_train[:count]

    def fingerprint(self) -> dict:
        """What identifies the data: its name, sizes and a hash of its arrays."""
        digest = hashlib.sha256()
        for array in (self.x_train, self.y_train, self.x_test, self.y_test):
            a = np.ascontiguousarray(array)
            digest.update(str((a.shape, a.dtype.str)).encode())
            digest.update(a[: min(len(a), 512)].tobytes())
            digest.update(a[-min(len(a), 512) :].tobytes())
        return identity(self.name, self.train_size, self.test_size, digest)


def identity(name: str, train: int, test: int, digest) -> dict:
    """A dataset's fingerprint record (checkpoints and results.json keep it)."""
    return {"name": name, "train": int(train), "test": int(test), "sha256": digest.hexdigest()[:32]}


class DatasetError(ValueError):
    """A dataset file is missing or corrupt; the message says where we looked."""


def load_digits(seed: int = 0) -> Dataset:
    with np.load(Path(__file__).with_name("data") / "digits.npz") as d:
        x = d["images"].astype(np.float32)[..., None] / 16.0
        y = d["labels"].astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return Dataset("digits", x[:cut], y[:cut], x[cut:], y[cut:], 10)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DatasetError(f"{path} is not an IDX file of {ndim}-D unsigned bytes")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(raw) - start != count:
        raise DatasetError(
            f"{path} is truncated or corrupt: header says {dims} ({count} bytes), file has "
            f"{len(raw) - start}"
        )
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"missing {stem}[.gz] in {folder}")


def load_idx(data_dir: str | Path | None, name: str = "mnist") -> Dataset:
    """MNIST or Fashion-MNIST from IDX files."""
    looked = []
    folders = [Path(data_dir)] if data_dir else []
    if name == "fashion_mnist" and not data_dir:
        folders.append(FASHION_MNIST_DEBIAN)
    for folder in folders:
        looked.append(str(folder))
        try:
            xs = [_read_idx(_find(folder, f"{s}-images-idx3-ubyte"), 3) for s in ("train", "t10k")]
            ys = [_read_idx(_find(folder, f"{s}-labels-idx1-ubyte"), 1) for s in ("train", "t10k")]
        except DatasetError as e:
            if len(folders) == 1:
                raise DatasetError(f"{name}: {e} (looked in {', '.join(looked)})") from e
            continue
        for x, y in zip(xs, ys, strict=True):
            if len(x) != len(y):
                raise DatasetError(f"{name} in {folder}: {len(x)} images but {len(y)} labels")
        return Dataset(
            name,
            xs[0].astype(np.float32)[..., None] / 255.0,
            ys[0].astype(np.int32),
            xs[1].astype(np.float32)[..., None] / 255.0,
            ys[1].astype(np.int32),
            10,
        )
    hint = " (pass --data-dir, or apt-get install dataset-fashion-mnist)" if not data_dir else ""
    raise DatasetError(
        f"{name}: no IDX files found; looked in {', '.join(looked) or 'nowhere'}{hint}"
    )


def load_cifar10(data_dir: str | Path | None) -> Dataset:
    """CIFAR-10 from the python batch files."""
    if not data_dir:
        raise DatasetError("cifar10 needs --data-dir with the python batch files")
    folder = Path(data_dir)
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"

    def batch(name):
        path = folder / name
        try:
            with open(path, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(d[b"labels"], np.int32)
        except FileNotFoundError as e:
            raise DatasetError(f"cifar10: missing {path}") from e
        except Exception as e:  # noqa: BLE001 - any unpickling/shape problem is "corrupt"
            raise DatasetError(f"cifar10: {path} is not a CIFAR-10 python batch: {e}") from e
        if len(x) != len(y):
            raise DatasetError(f"cifar10: {path} has {len(x)} images but {len(y)} labels")
        return x, y

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    xt, yt = batch("test_batch")
    x = np.concatenate([t[0] for t in train]).astype(np.float32) / 255.0
    y = np.concatenate([t[1] for t in train])
    return Dataset("cifar10", x, y, xt.astype(np.float32) / 255.0, yt, 10)


def default_text_path() -> Path:
    """A long text that ships with Python itself: pydoc's topic help (~750 kB)."""
    import pydoc_data.topics

    return Path(pydoc_data.topics.__file__)


def load_text(path: str | Path | None = None, context: int = 64, seed: int = 0) -> Dataset:
    """A character-level corpus: inputs are ``context`` characters, targets the next ones."""
    path = Path(path) if path else default_text_path()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DatasetError(f"text: cannot read {path}: {e}") from e
    if len(text) < 4 * (context + 1):
        raise DatasetError(
            f"text: {path} has {len(text)} characters; need at least {4 * (context + 1)}"
        )
    chars = sorted(set(text))
    codes = np.array([chars.index(c) for c in text[:400_000]], np.int32)
    n = (len(codes) - 1) // context
    x = codes[: n * context].reshape(n, context)
    y = codes[1 : n * context + 1].reshape(n, context)
    order = np.random.default_rng(seed).permutation(n)
    x, y = x[order], y[order]
    cut = int(0.9 * n)
    return Dataset(f"text:{path.name}", x[:cut], y[:cut], x[cut:], y[cut:], len(chars))


DATASETS = "cifar10, coco, digits, fashion_mnist, imagefolder, mnist, pairs, text"


def load(
    name: str,
    data_dir: str | None = None,
    seed: int = 0,
    data_file: str | None = None,
    image_size: int | None = None,
) -> Dataset:
    """A dataset by name (``DATASETS``); ``text`` and ``pairs`` read
    ``data_file`` (text: also ``data_dir``, as before), the others
    ``data_dir``; ``imagefolder`` streams its images at ``image_size`` (224
    by default), ``coco`` resizes them (64; its synthetic default: 32)."""
    if name == "digits":
        return load_digits(seed)
    if name in ("mnist", "fashion_mnist"):
        return load_idx(data_dir, name)
    if name == "cifar10":
        return load_cifar10(data_dir)
    if name == "text":
        return load_text(data_file or data_dir, seed=seed)
    if name == "imagefolder":
        from approxjax._src.runner.image_folders import load_image_folder

        return load_image_folder(data_dir, image_size or 224, seed)
    if name == "coco":
        from approxjax._src.runner.detection import load_detection

        return load_detection(data_dir, image_size, seed)
    if name == "pairs":
        from approxjax._src.runner.translation import load_pairs

        return load_pairs(data_file, seed)
    raise DatasetError(f"unknown dataset {name!r}; known: {DATASETS}")
