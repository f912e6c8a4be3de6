"""Detection: COCO-format folders (both layouts) and their errors, the
synthetic shapes, the detector's loss, decoding and non-maximum suppression,
and mAP (each against a computation by hand), and the runner's detector
sweep under a multiplier."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from approxjax import datasets
from approxjax._src.runner import detection as det
from approxjax._src.runner import sweep
from approxjax._src.runner.config import ConfigError, SweepConfig
from approxjax.datasets import DatasetError


def _coco(folder, images=4, bad=None, layout="single"):
    """A tiny COCO folder: 40x30 images, two categories (ids 3 and 7)."""
    img_dir = folder / ("images" if layout == "single" else layout)
    img_dir.mkdir(parents=True, exist_ok=True)
    doc = {"images": [], "annotations": [],
           "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}  # fmt: skip
    for i in range(images):
        Image.new("RGB", (40, 30), (10 * i, 0, 0)).save(img_dir / f"im{i}.png")
        doc["images"].append({"id": 100 + i, "file_name": f"im{i}.png", "width": 40, "height": 30})
        doc["annotations"].append(
            {"id": i + 1, "image_id": 100 + i, "category_id": 7 if i % 2 else 3,
             "bbox": [4.0, 3.0, 20.0, 15.0], "iscrowd": 0}
        )  # fmt: skip
    doc["annotations"].append(
        {"id": 99, "image_id": 100, "category_id": 7, "bbox": [0, 0, 40, 30], "iscrowd": 1}
    )
    if bad:
        doc["annotations"].append({"id": 50, "image_id": 101, **bad})
    name = "annotations.json" if layout == "single" else f"annotations/instances_{layout}.json"
    (folder / name).parent.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps(doc))
    return folder


def test_coco_folders_in_both_layouts(tmp_path):
    data = datasets.load("coco", str(_coco(tmp_path / "one", images=10)), image_size=16)
    assert not data.synthetic and data.classes == ["dog", "cat"]  # sorted by category id
    assert (len(data.x_train), len(data.x_test)) == (9, 1) and data.x_train.shape[1:] == (16, 16, 3)
    boxes = np.concatenate([data.y_train, data.y_test])
    assert boxes.shape[1] == 1  # the crowd annotation is skipped
    np.testing.assert_allclose(boxes[0, 0, 1:], [14 / 40, 10.5 / 30, 20 / 40, 15 / 30])
    assert sorted(set(boxes[:, 0, 0])) == [0.0, 1.0]
    _coco(tmp_path / "two", images=4, layout="train2017")
    _coco(tmp_path / "two", images=2, layout="val2017")
    data = det.read_coco(tmp_path / "two", 16)
    assert (len(data.x_train), len(data.x_test)) == (4, 2)


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"category_id": 3, "bbox": [30, 3, 20, 10]},
         r"annotation 50 \(image im1.png\): box \[30, 3, 20, 10\] lies outside the 40x30"),
        ({"category_id": 3, "bbox": [3, 3, 0, 10]}, r"annotation 50 .* has no area"),
        ({"category_id": 5, "bbox": [3, 3, 5, 5]}, "annotation 50 has unknown category 5"),
    ],
)  # fmt: skip
def test_malformed_coco_data_names_the_file_and_annotation(tmp_path, bad, message):
    folder = _coco(tmp_path / "d", bad=bad)
    with pytest.raises(DatasetError, match=message) as e:
        det.read_coco(folder, 16)
    assert "annotations.json" in str(e.value)


def test_missing_images_and_bad_json(tmp_path):
    folder = _coco(tmp_path / "d")
    (folder / "images" / "im2.png").unlink()
    with pytest.raises(DatasetError, match=r"image 102: cannot read .*im2.png"):
        det.read_coco(folder, 16)
    (folder / "annotations.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read .*annotations.json"):
        det.read_coco(folder, 16)
    with pytest.raises(DatasetError, match="has neither annotations/instances_train"):
        det.read_coco(tmp_path, 16)


def test_synthetic_shapes_are_labelled_and_boxed():
    data = det.load_detection(None)
    assert data.synthetic and data.name == "synthetic-shapes" and data.classes == list(det.SHAPES)
    boxes = data.y_train[data.y_train[..., 0] >= 0]
    assert len(boxes) >= len(data.x_train)  # 1-3 shapes an image
    assert np.all(boxes[:, 1:3] - boxes[:, 3:5] / 2 >= 0) and np.all(
        boxes[:, 1:3] + boxes[:, 3:5] / 2 <= 1
    )


def test_loss_against_hand_computation():
    # 4x4 grid, 3 classes: a box of class 2 centred at (0.6, 0.3), cell (row 1, col 2),
    # whose class-2 logit is 1, and one of class 1 at (0.1, 0.9), cell (3, 0), logits 0.
    boxes = jnp.asarray(
        [[[2, 0.6, 0.3, 0.25, 0.16], [1, 0.1, 0.9, 0.09, 0.36], [-1, 0, 0, 0, 0]]], jnp.float32
    )
    outputs = jnp.zeros((1, 4, 4, 8)).at[0, 1, 2, 5 + 2].set(1.0)
    loss, metrics = det.detection_loss(outputs, boxes)
    box1 = sum((0.5 - t) ** 2 for t in [0.6 * 4 - 2, 0.3 * 4 - 1, 0.5, 0.4])
    box2 = sum((0.5 - t) ** 2 for t in [0.1 * 4, 0.9 * 4 - 3, 0.3, 0.6])
    ce1, ce2 = math.log(math.e + 2) - 1, math.log(3)
    # Objectness: zero logits cost log 2 at every cell, whatever the target.
    expected = math.log(2) + (5 * box1 + ce1 + 5 * box2 + ce2) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["count"]) == 2
    assert float(metrics["accuracy"]) == 0.5  # class 2 right; class 1 read as 0


def test_decoding_nms_and_iou_by_hand():
    a = np.array([0.0, 0.0, 10.0, 10.0])
    b = np.array([[5.0, 0.0, 10.0, 10.0], [20.0, 20.0, 5.0, 5.0]])
    np.testing.assert_allclose(det.iou(a, b), [50 / 150, 0.0])
    rows = np.array([[0, 0, 10, 10, 0.9, 0], [1, 0, 10, 10, 0.8, 0], [5, 0, 10, 10, 0.7, 0],
                     [30, 30, 4, 4, 0.6, 0]], float)  # fmt: skip
    kept = det.nms(rows)  # IoU(row 0, row 1) = 90/110 > 0.5 goes; row 2: 50/150 stays
    np.testing.assert_array_equal(kept[:, 4], [0.9, 0.7, 0.6])
    out = np.full((1, 2, 2, 5 + 2), -20.0)
    out[0, 1, 0] = [20.0, 0.0, 0.0, 0.0, 0.0, 20.0, -20.0]  # cell row 1, col 0: class 0
    (found,) = det.decode_boxes(out, 32)
    assert len(found) == 1
    # centre (0 + 0.5) / 2 * 32 = 8, (1 + 0.5) / 2 * 32 = 24; size 0.5**2 * 32 = 8.
    np.testing.assert_allclose(found[0, :4], [4, 20, 8, 8])
    assert found[0, 5] == 0 and found[0, 4] == pytest.approx(1.0, abs=1e-6)


def test_map_against_the_definition():
    truth = np.array([[[0, 0.25, 0.25, 0.25, 0.25], [0, 0.75, 0.75, 0.25, 0.25]]], np.float32)
    perfect = [np.array([[4, 4, 8, 8, 0.9, 0], [20, 20, 8, 8, 0.8, 0]], float)]
    assert det.coco_map(truth, perfect, 32, 1) == pytest.approx((1.0, 1.0))
    # One hit (score 0.9), then a false positive (0.8); the second box is missed:
    # precision 1 up to recall 0.5, then nothing. COCO's 101-point interpolation
    # counts the recall points 0, 0.01, ..., 0.50: 51 of 101, at every IoU threshold.
    half = [np.array([[4, 4, 8, 8, 0.9, 0], [0, 24, 4, 4, 0.8, 0]], float)]
    assert det.coco_map(truth, half, 32, 1) == pytest.approx((51 / 101, 51 / 101))
    assert det.coco_map(truth, [np.zeros((0, 6))], 32, 1) == (0.0, 0.0)


def test_runner_detector_sweep(tmp_path, monkeypatch):
    from approxjax._src.runner.outputs import format_results

    monkeypatch.setattr(det, "SYNTHETIC_IMAGES", 80)  # 72 train, 8 test: quick
    cfg = SweepConfig(
        model="detector", dataset="coco", epochs=2, batch_size=16,
        multipliers=["mitchell5", "truncated5"], out_dir=str(tmp_path / "out"),
    )  # fmt: skip
    logs = []
    results = sweep.run_sweep(cfg, log=logs.append, show_progress=False)
    assert "synthetic-shapes (synthetic)" in logs[0] and results["data"]["synthetic"] is True
    for name in ("float32", "mitchell5", "truncated5"):
        run = results["runs"][name]
        assert len(run["map50_curve"]) == 2 and 0.0 <= run["test_map"] <= run["test_map50"] <= 1.0
    table = format_results(results)
    assert "mAP@.5" in table and "SYNTHETIC" in table
    head = (tmp_path / "out" / "results.csv").read_text().splitlines()[0]
    assert "test_map50" in head and "test_map" in head
    with pytest.raises(ConfigError, match="--model detector goes with --dataset coco"):
        sweep.run_sweep(SweepConfig(model="detector", out_dir=""), log=lambda _: None)
