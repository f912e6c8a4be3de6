"""Image-folder datasets (ImageNet as distributed after extraction), streamed
through grain with the usual augmentation.

Layout: ``DIR/<class>/<image>`` (one folder per class; JPEG or PNG files,
found recursively; other files are ignored), split per class 90/10 with the
seed, or ``DIR/train/<class>/...`` beside ``DIR/val/<class>/...`` (or
``test/``), used as given. Classes are the sorted folder names of the
training set; a class folder without images, a test class the training set
lacks, or an image that cannot be decoded is an error naming the folder or
file.

Training images get a random resized crop (area 8-100%, aspect ratio 3/4-4/3,
Szegedy et al. 2015) to ``image_size`` and a random horizontal flip; test
images are resized (shorter side ``image_size / 0.875``) and center-cropped.
Pixels come as float32 NHWC in [0, 1], labels as int32, as the other
datasets'. Decoding and augmentation run on grain's threads, in a
reproducible order (shuffle and augmentation seeded by the seed and the
epoch), so nothing but the file list is held in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from approxjax._src.runner.datasets import DatasetError, identity

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_THREADS = 8


def _scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list, list]:
    """(classes, image paths, labels) of one class-per-folder tree."""
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not found:
        raise DatasetError(f"imagefolder: {folder} has no class folders (one folder per class)")
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DatasetError(
            f"imagefolder: {folder} has class folder(s) {unknown[:5]} that the training set lacks"
        )
    paths, labels = [], []
    for name in found:
        images = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(
                f"imagefolder: class folder {folder / name} holds no images "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
        paths += images
        labels += [classes.index(name)] * len(images)
    return classes, paths, labels


def _read(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as e:
        raise DatasetError(f"imagefolder: cannot decode {path}: {e}") from e


def _train_image(record, rng: np.random.Generator, size: int):
    """Random resized crop (area 8-100%, ratio 3/4-4/3) and horizontal flip."""
    from PIL import Image

    path, label = record
    image = _read(Path(path))
    w, h = image.size
    for _ in range(10):
        area = w * h * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:  # the whole image's central square
        cw = ch = min(w, h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    image = image.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(image, np.float32) / 255.0, np.int32(label)


def _test_image(record, size: int):
    """Shorter side to ``size / 0.875``, then the central ``size`` square."""
    from PIL import Image

    path, label = record
    image = _read(Path(path))
    w, h = image.size
    scale = size / 0.875 / min(w, h)
    rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((rw, rh), Image.BILINEAR)
    x0, y0 = (rw - size) // 2, (rh - size) // 2
    image = image.crop((x0, y0, x0 + size, y0 + size))
    return np.asarray(image, np.float32) / 255.0, np.int32(label)


def _stack(batch):
    xs, ys = zip(*batch, strict=True)
    return np.stack(xs), np.asarray(ys, np.int32)


@dataclasses.dataclass
class ImageFolderData:
    """A streamed image-folder dataset (module docstring); the runner's
    dataset interface (``train_batches``, ``test_batches``, ``sample``)."""

    name: str
    train_files: list[str]
    train_labels: list[int]
    test_files: list[str]
    test_labels: list[int]
    classes: list[str]
    image_size: int
    synthetic: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_size(self) -> int:
        return len(self.train_files)

    @property
    def test_size(self) -> int:
        return len(self.test_files)

    def train_batches(self, seed: int, batch_size: int, limit: int) -> Iterator:
        """Full batches of the first ``limit`` training images, shuffled and
        augmented with ``seed``: ``max(limit // batch_size, 1)`` of them."""
        import grain

        records = list(zip(self.train_files[:limit], self.train_labels[:limit], strict=True))
        steps = max(limit // batch_size, 1)
        ds = grain.MapDataset.source(records).shuffle(seed=seed)
        if limit < batch_size:
            ds = ds.repeat(math.ceil(batch_size / limit))
        size = self.image_size
        ds = ds.random_map(lambda r, rng: _train_image(r, rng, size), seed=seed)
        ds = ds.batch(batch_size, drop_remainder=True, batch_fn=_stack)[:steps]
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=_THREADS)))

    def test_batches(self, batch_size: int) -> Iterator:
        """The test images in order, center-cropped, in batches (the last one shorter)."""
        import grain

        records = list(zip(self.test_files, self.test_labels, strict=True))
        size = self.image_size
        ds = grain.MapDataset.source(records).map(lambda r: _test_image(r, size))
        ds = ds.batch(batch_size, batch_fn=_stack)
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=_THREADS)))

    def sample(self, count: int):
        """The first ``count`` test images and labels (shapes for tracing)."""
        return next(self.test_batches(count))

    def fingerprint(self) -> dict:
        digest = hashlib.sha256()
        for part in (self.train_files, self.train_labels, self.test_files, self.test_labels):
            digest.update(repr(part).encode())
        digest.update(repr((self.classes, self.image_size)).encode())
        return identity(self.name, self.train_size, self.test_size, digest)


def load_image_folder(data_dir: str | Path | None, image_size: int = 224, seed: int = 0):
    """The image folder ``data_dir`` (module docstring) as an :class:`ImageFolderData`."""
    if not data_dir:
        raise DatasetError("imagefolder needs --data-dir: a folder with one folder per class")
    root = Path(data_dir)
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    rng = np.random.default_rng(seed)
    if (root / "train").is_dir() and test_dir is not None:
        classes, train, train_y = _scan(root / "train")
        _, test, test_y = _scan(test_dir, classes)
        order = rng.permutation(len(train))
        train, train_y = [train[i] for i in order], [train_y[i] for i in order]
    else:
        classes, paths, labels = _scan(root)
        train, train_y, test, test_y = [], [], [], []
        for c in range(len(classes)):
            members = [p for p, y in zip(paths, labels, strict=True) if y == c]
            members = [members[i] for i in rng.permutation(len(members))]
            cut = len(members) - max(len(members) // 10, 1 if len(members) > 1 else 0)
            train += members[:cut]
            train_y += [c] * cut
            test += members[cut:]
            test_y += [c] * (len(members) - cut)
        order = rng.permutation(len(train))
        train, train_y = [train[i] for i in order], [train_y[i] for i in order]
    if not test:
        raise DatasetError(f"imagefolder: {root} leaves no test images (one image per class?)")
    return ImageFolderData(
        f"imagefolder:{root.name}", [str(p) for p in train], train_y, [str(p) for p in test],
        test_y, classes, image_size,
    )  # fmt: skip
