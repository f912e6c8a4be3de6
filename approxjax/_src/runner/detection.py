"""Object detection under simulated arithmetic: COCO-format data (or
synthetic shapes), a single-stage YOLO-style detector, its loss, decoding
with non-maximum suppression, and COCO mAP by pycocotools.

Data. :func:`read_coco` reads COCO-format annotations: either
``DIR/annotations/instances_<split>.json`` with the images in ``DIR/<split>/``
(``train*`` and ``val*`` splits, as COCO 2017 is distributed), or one
``DIR/annotations.json`` with its images under ``DIR/images/`` (or ``DIR``),
split 90/10 with the seed. Crowd annotations are skipped. A box outside its
image, a box without area, an unknown category or image, or a missing image
file is an error naming the JSON file and the annotation (or the image).
Images are resized (stretched) to ``image_size`` squares; boxes follow.
Without a folder, :func:`synthetic_shapes` draws squares, discs and
triangles with their boxes (labelled synthetic everywhere it is reported).

Boxes travel as ``(N, max_boxes, 5)`` float32 rows ``[class, cx, cy, w, h]``
(centre and size as fractions of the image; class -1 pads).

Model (:class:`Detector`): a convolutional backbone of stride 8 whose every
convolution is approxjax's (the multiplier of :func:`approxjax.using`), and a
1x1 head predicting, per grid cell, objectness, the box centre within the
cell, the square roots of the box's width and height, and class logits (one
box per cell, YOLOv1-style; the cell holding a box's centre is responsible
for it, the last such box where two share a cell). Loss: objectness
cross-entropy over all cells, plus 5 x squared error of centre and size, and
class cross-entropy, at responsible cells; the reported ``accuracy`` is the
class accuracy at responsible cells.

Decoding: score = objectness x class probability; per class, greedy
non-maximum suppression at IoU 0.5; the 100 best per image. mAP@0.5 and
mAP@[.5:.95] are pycocotools' COCOeval (boxes in pixels of the resized
image).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from approxjax._src.flax.modules import Conv
from approxjax._src.runner.datasets import Dataset, DatasetError

SHAPES = ("square", "disc", "triangle")
MAX_BOXES = 50
SYNTHETIC_IMAGES = 600  # the synthetic default's size (90% train, 10% test)

# ----------------------------------------------------------------- data


@dataclasses.dataclass
class DetectionData(Dataset):
    """Images and padded boxes for the runner (module docstring), with the
    class names."""

    classes: list[str] = dataclasses.field(default_factory=list)
    synthetic: bool = False
    note: str = ""


def synthetic_shapes(count: int, size: int = 32, seed: int = 0):
    """``count`` images of ``size`` pixels with 1-3 shapes each:
    ``(images (count, size, size, 3) in [0, 1], boxes (count, 3, 5))``."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.25, (count, size, size, 3)).astype(np.float32)
    boxes = np.full((count, 3, 5), -1.0, np.float32)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for n in range(count):
        for k in range(rng.integers(1, 4)):
            kind = int(rng.integers(len(SHAPES)))
            side = int(rng.integers(size // 5, size // 2))
            x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
            u, v = (xx - x0) / side, (yy - y0) / side
            inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
            if kind == 1:
                inside &= (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
            elif kind == 2:
                inside &= np.abs(u - 0.5) <= v / 2
            images[n][inside] = rng.uniform(0.5, 1.0, 3)
            boxes[n, k] = [kind, (x0 + side / 2) / size, (y0 + side / 2) / size,
                           side / size, side / size]  # fmt: skip
    return images, boxes


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"coco: cannot read {path}: {e}") from e


def _read_split(path: Path, folder: Path, size: int, categories: dict | None):
    """(images, boxes, class names) of one COCO annotation file."""
    from PIL import Image

    doc = _load_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DatasetError(f"coco: {path} has no {key!r} list")
    if categories is None:
        categories = {c["id"]: i for i, c in enumerate(sorted(doc["categories"],
                                                               key=lambda c: c["id"]))}  # fmt: skip
    names = {c["id"]: c.get("name", str(c["id"])) for c in doc["categories"]}
    meta = {im["id"]: im for im in doc["images"]}
    per_image: dict = {i: [] for i in meta}
    for a in doc["annotations"]:
        aid, iid = a.get("id"), a.get("image_id")
        if a.get("iscrowd"):
            continue
        if iid not in meta:
            raise DatasetError(f"coco: {path}: annotation {aid} names unknown image {iid}")
        if a.get("category_id") not in categories:
            raise DatasetError(
                f"coco: {path}: annotation {aid} has unknown category {a.get('category_id')}"
            )
        im = meta[iid]
        x, y, w, h = (float(v) for v in a["bbox"])
        width, height = float(im["width"]), float(im["height"])
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width + 0.5 or y + h > height + 0.5:
            raise DatasetError(
                f"coco: {path}: annotation {aid} (image {im.get('file_name')}): box "
                f"[{x:g}, {y:g}, {w:g}, {h:g}] lies outside the {width:g}x{height:g} image or "
                "has no area"
            )
        per_image[iid].append([categories[a["category_id"]], (x + w / 2) / width,
                               (y + h / 2) / height, w / width, h / height])  # fmt: skip
    ids = sorted(meta)
    images = np.zeros((len(ids), size, size, 3), np.float32)
    most = max([len(v) for v in per_image.values()] + [1])
    boxes = np.full((len(ids), min(most, MAX_BOXES), 5), -1.0, np.float32)
    for n, iid in enumerate(ids):
        file = folder / meta[iid]["file_name"]
        try:
            with Image.open(file) as im:
                images[n] = np.asarray(im.convert("RGB").resize((size, size)), np.float32) / 255
        except (OSError, ValueError) as e:
            raise DatasetError(f"coco: {path}: image {iid}: cannot read {file}: {e}") from e
        rows = per_image[iid][:MAX_BOXES]
        if rows:
            boxes[n, : len(rows)] = rows
    order = sorted(categories, key=categories.get)
    return images, boxes, [names[c] for c in order], categories


def read_coco(data_dir: str | Path, image_size: int = 64, seed: int = 0) -> DetectionData:
    """A COCO-format folder (module docstring) as a :class:`DetectionData`."""
    root = Path(data_dir)
    found = sorted((root / "annotations").glob("instances_*.json"))
    train = [p for p in found if p.stem[len("instances_") :].startswith("train")]
    val = [p for p in found if p.stem[len("instances_") :].startswith("val")]
    if train and val:
        split = lambda p: root / p.stem[len("instances_") :]  # noqa: E731
        x, y, classes, cats = _read_split(train[0], split(train[0]), image_size, None)
        xt, yt, _, _ = _read_split(val[0], split(val[0]), image_size, cats)
        width = max(y.shape[1], yt.shape[1])
        y, yt = (np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=-1)
                 for b in (y, yt))  # fmt: skip
    elif (root / "annotations.json").is_file():
        folder = root / "images" if (root / "images").is_dir() else root
        xs, ys, classes, _ = _read_split(root / "annotations.json", folder, image_size, None)
        if len(xs) < 2:
            raise DatasetError(f"coco: {root / 'annotations.json'} has {len(xs)} image(s); need 2")
        order = np.random.default_rng(seed).permutation(len(xs))
        cut = len(xs) - max(len(xs) // 10, 1)
        x, y, xt, yt = xs[order[:cut]], ys[order[:cut]], xs[order[cut:]], ys[order[cut:]]
    else:
        raise DatasetError(
            f"coco: {root} has neither annotations/instances_train*.json with "
            "instances_val*.json nor annotations.json"
        )
    return DetectionData(f"coco:{root.name}", x, y, xt, yt, len(classes), classes=classes)


def load_detection(data_dir: str | None, image_size: int | None = None, seed: int = 0):
    """``data_dir``'s COCO data at ``image_size`` (default 64), or the
    synthetic shapes (32 pixels by default) without one."""
    if data_dir:
        return read_coco(data_dir, image_size or 64, seed)
    x, y = synthetic_shapes(SYNTHETIC_IMAGES, image_size or 32, seed)
    cut = SYNTHETIC_IMAGES - SYNTHETIC_IMAGES // 10
    return DetectionData(
        "synthetic-shapes", x[:cut], y[:cut], x[cut:], y[cut:], len(SHAPES),
        classes=list(SHAPES), synthetic=True,
    )  # fmt: skip


# ---------------------------------------------------------------- model


class Detector(nn.Module):
    """A YOLO-style single-stage detector (module docstring): three stages of
    approximate 3x3 convolutions (GroupNorm, ReLU), each ending in a stride-2
    one, and a 1x1 head of ``5 + num_classes`` outputs per cell."""

    num_classes: int
    width: int = 32

    @nn.compact
    def __call__(self, x):
        for features in (self.width, 2 * self.width, 4 * self.width):
            x = nn.relu(nn.GroupNorm(num_groups=8)(Conv(features, (3, 3))(x)))
            x = nn.relu(Conv(features, (3, 3), strides=2)(x))
        return Conv(5 + self.num_classes, (1, 1))(x)


def _targets(boxes: jax.Array, s: int):
    """Per cell: responsible (bool), box targets (x, y in the cell, sqrt w,
    sqrt h) and class, from padded boxes ``(B, M, 5)``."""
    valid = boxes[..., 0] >= 0
    gi = jnp.clip(jnp.floor(boxes[..., 1] * s), 0, s - 1)
    gj = jnp.clip(jnp.floor(boxes[..., 2] * s), 0, s - 1)
    cell = (gj * s + gi).astype(jnp.int32)
    hit = (cell[..., None] == jnp.arange(s * s)) & valid[..., None]  # (B, M, S*S)
    m = boxes.shape[1]
    owner = jnp.argmax(hit * (jnp.arange(m) + 1)[:, None], axis=1)  # the last box, (B, S*S)
    values = jnp.stack(
        [boxes[..., 1] * s - gi, boxes[..., 2] * s - gj,
         jnp.sqrt(jnp.maximum(boxes[..., 3], 0)), jnp.sqrt(jnp.maximum(boxes[..., 4], 0))],
        axis=-1,
    )  # fmt: skip
    target = jnp.take_along_axis(values, owner[..., None], axis=1)
    label = jnp.take_along_axis(boxes[..., 0], owner, axis=1).astype(jnp.int32)
    return hit.any(axis=1), target, label


def detection_loss(outputs: jax.Array, boxes: jax.Array) -> tuple[jax.Array, dict]:
    """The detector's loss (module docstring) and class accuracy at
    responsible cells (``count`` of them weighs batches)."""
    import optax

    b, s = outputs.shape[0], outputs.shape[1]
    out = outputs.reshape(b, s * s, -1).astype(jnp.float32)
    pos, target, label = _targets(boxes, s)
    posf = pos.astype(jnp.float32)
    count = jnp.maximum(posf.sum(), 1.0)
    obj = optax.sigmoid_binary_cross_entropy(out[..., 0], posf).mean()
    box = jnp.sum((jax.nn.sigmoid(out[..., 1:5]) - target) ** 2, -1)
    cls = optax.softmax_cross_entropy_with_integer_labels(out[..., 5:], jnp.maximum(label, 0))
    loss = obj + jnp.sum((5.0 * box + cls) * posf) / count
    correct = (jnp.argmax(out[..., 5:], -1) == label) * posf
    return loss, {"accuracy": correct.sum() / count, "count": posf.sum()}


# ------------------------------------------------------------- decoding


def decode_boxes(outputs: np.ndarray, image_size: int, threshold: float = 0.01):
    """Per image, ``(n, 6)`` rows ``[x, y, w, h, score, class]`` in pixels:
    every cell's box scored objectness x class probability, above
    ``threshold``, after per-class non-maximum suppression (IoU 0.5), at most
    100."""
    out = np.asarray(outputs, np.float64)
    b, s = out.shape[0], out.shape[1]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    gj, gi = np.mgrid[0:s, 0:s]
    logits = out[..., 5:] - out[..., 5:].max(-1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    cx = (gi + sig(out[..., 1])) / s * image_size
    cy = (gj + sig(out[..., 2])) / s * image_size
    w, h = sig(out[..., 3]) ** 2 * image_size, sig(out[..., 4]) ** 2 * image_size
    cls = probs.argmax(-1)
    score = sig(out[..., 0]) * probs.max(-1)
    results = []
    for n in range(b):
        rows = np.stack([cx[n] - w[n] / 2, cy[n] - h[n] / 2, w[n], h[n], score[n], cls[n]],
                        axis=-1).reshape(-1, 6)  # fmt: skip
        rows = rows[rows[:, 4] > threshold]
        kept = [nms(rows[rows[:, 5] == c]) for c in np.unique(rows[:, 5])]
        rows = np.concatenate(kept) if kept else np.zeros((0, 6))
        results.append(rows[np.argsort(-rows[:, 4], kind="stable")][:100])
    return results


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``[x, y, w, h]`` box ``a`` with each row of ``b``."""
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2 = np.minimum(a[0] + a[2], b[:, 0] + b[:, 2])
    y2 = np.minimum(a[1] + a[3], b[:, 1] + b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (a[2] * a[3] + b[:, 2] * b[:, 3] - inter)


def nms(rows: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression of ``[x, y, w, h, score, ...]`` rows:
    the best box stays, boxes overlapping it above ``threshold`` go, repeat."""
    rows = rows[np.argsort(-rows[:, 4], kind="stable")]
    kept = []
    while len(rows):
        kept.append(rows[0])
        rows = rows[1:][iou(rows[0], rows[1:]) <= threshold]
    return np.stack(kept) if kept else np.zeros((0, rows.shape[1]))


def coco_map(
    truth: np.ndarray, detections: list[np.ndarray], image_size: int, num_classes: int
) -> tuple[float, float]:
    """(mAP@0.5, mAP@[.5:.95]) by pycocotools' COCOeval: ``truth`` the padded
    boxes ``(N, M, 5)``, ``detections`` :func:`decode_boxes`' rows per image."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations = []
    for n, rows in enumerate(truth):
        for c, cx, cy, w, h in rows[rows[:, 0] >= 0]:
            box = [(cx - w / 2) * image_size, (cy - h / 2) * image_size,
                   w * image_size, h * image_size]  # fmt: skip
            annotations.append(
                {"id": len(annotations) + 1, "image_id": n, "iscrowd": 0, "category_id": int(c),
                 "bbox": box, "area": box[2] * box[3]}
            )  # fmt: skip
    found = [{"image_id": n, "category_id": int(r[5]), "bbox": [float(v) for v in r[:4]],
              "score": float(r[4])} for n, rows in enumerate(detections) for r in rows]  # fmt: skip
    if not annotations or not found:
        return 0.0, 0.0
    gt = COCO()
    gt.dataset = {
        "images": [{"id": n} for n in range(len(truth))],
        "annotations": annotations,
        "categories": [{"id": c} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(found), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return max(float(evaluation.stats[1]), 0.0), max(float(evaluation.stats[0]), 0.0)
