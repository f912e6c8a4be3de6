"""Image folders: the class-per-folder layouts, the grain pipeline's batches
(augmented training crops, center-cropped test images, reproducible), errors
that name the folder or file, and an ImageNet-style ResNet trained on a tiny
generated folder by the runner under a multiplier."""

import numpy as np
import pytest
from PIL import Image

from approxjax import datasets
from approxjax._src.runner import sweep
from approxjax._src.runner.config import SweepConfig
from approxjax._src.runner.image_folders import _test_image, load_image_folder
from approxjax.datasets import DatasetError

COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]


def _folder(root, per_class=8, size=(40, 48)):
    rng = np.random.default_rng(0)
    for c, color in enumerate(COLORS):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = (rng.random((*size, 3)) * 60).astype(np.uint8)
            Image.fromarray(noise + np.array(color, np.uint8) // 2).save(
                d / f"img{i}.{'png' if i % 2 else 'jpg'}"
            )
    (root / "class_0" / "notes.txt").write_text("not an image: ignored")
    return root


def test_split_batches_and_augmentation(tmp_path):
    data = datasets.load("imagefolder", str(_folder(tmp_path / "imgs")), image_size=16)
    assert data.classes == ["class_0", "class_1", "class_2"] and data.num_classes == 3
    assert (data.train_size, data.test_size) == (21, 3)  # 10% of each class held out
    assert sorted(data.test_labels) == [0, 1, 2]
    assert not set(data.train_files) & set(data.test_files)
    batches = list(data.train_batches(seed=5, batch_size=8, limit=21))
    assert len(batches) == 2  # full batches only
    for x, y in batches:
        assert x.shape == (8, 16, 16, 3) and x.dtype == np.float32 and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0
    again = list(data.train_batches(seed=5, batch_size=8, limit=21))
    other = list(data.train_batches(seed=6, batch_size=8, limit=21))
    np.testing.assert_array_equal(batches[0][0], again[0][0])  # reproducible
    assert not np.array_equal(batches[0][0], other[0][0])  # another epoch, other crops
    # The colour of each class survives cropping: the label is the brightest channel.
    for x, y in batches:
        np.testing.assert_array_equal(np.argmax(x.mean(axis=(1, 2)), -1), y)
    (x, y), = list(data.test_batches(8))  # fmt: skip
    assert x.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(y, data.test_labels)


def test_center_crop_against_hand_computation(tmp_path):
    # 8x16 image, columns numbered: shorter side 8 -> 8/0.875 = 9.14 -> resized to
    # 18x9, the central 8x8 square: columns 5..12 of the resized image.
    a = np.tile(np.arange(16, dtype=np.uint8)[None, :, None] * 16, (8, 1, 3))
    Image.fromarray(a).save(tmp_path / "x.png")
    x, label = _test_image((str(tmp_path / "x.png"), 2), 8)
    assert x.shape == (8, 8, 3) and label == 2
    expected = np.asarray(
        Image.fromarray(a).resize((18, 9), Image.BILINEAR).crop((5, 0, 13, 8)), np.float32
    )
    np.testing.assert_array_equal(x, expected / 255.0)


def test_train_and_val_folders_and_errors(tmp_path):
    _folder(tmp_path / "ds" / "train")
    _folder(tmp_path / "ds" / "val", per_class=2)
    data = load_image_folder(tmp_path / "ds", 16)
    assert (data.train_size, data.test_size) == (24, 6)
    (tmp_path / "ds" / "val" / "class_9").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "ds" / "val" / "class_9" / "a.png")
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['class_9'\] that the training"):
        load_image_folder(tmp_path / "ds", 16)
    empty = _folder(tmp_path / "empty")
    (empty / "class_3").mkdir()
    with pytest.raises(DatasetError, match=r"class folder .*class_3 holds no images"):
        load_image_folder(empty, 16)
    with pytest.raises(DatasetError, match="has no class folders"):
        load_image_folder(tmp_path / "empty" / "class_0", 16)
    broken = _folder(tmp_path / "broken", per_class=2)
    (broken / "class_1" / "img0.jpg").write_bytes(b"not a jpeg")
    data = load_image_folder(broken, 8)
    with pytest.raises(DatasetError, match=r"cannot decode .*class_1.img0\.jpg"):
        for _ in data.train_batches(0, 2, data.train_size):
            pass
        for _ in data.test_batches(2):
            pass


def test_runner_trains_a_resnet_on_an_image_folder(tmp_path):
    cfg = SweepConfig(
        model="resnet18", dataset="imagefolder", data_dir=str(_folder(tmp_path / "imgs")),
        image_size=16, batch_size=8, epochs=1, multipliers=["mitchell5"],
        out_dir=str(tmp_path / "out"),
    )  # fmt: skip
    logs = []
    results = sweep.run_sweep(cfg, log=logs.append, show_progress=False)
    assert "imagefolder:imgs (21 of 21 train, 3 test)" in logs[0]
    assert set(results["runs"]) == {"float32", "mitchell5"}
    assert results["data"]["train"] == 21 and results["data"]["synthetic"] is False
    for run in results["runs"].values():
        assert min(abs(run["test_accuracy"] - k / 3) for k in range(4)) < 1e-6  # of 3 images
