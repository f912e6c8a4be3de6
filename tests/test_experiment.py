"""Datasets (real file formats, written here), models and the sweep runner."""

import gzip
import json
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

import approxjax as ax
from approxjax import datasets, experiment, networks


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def _fake_mnist(folder, n=20, gz=False):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for split in ("train", "t10k"):
        _write_idx(
            folder / f"{split}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 28, 28)), gz
        )
        _write_idx(folder / f"{split}-labels-idx1-ubyte{sfx}", rng.integers(0, 10, (n,)), gz)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_loader(tmp_path, gz):
    _fake_mnist(tmp_path, gz=gz)
    d = datasets.load("mnist", str(tmp_path))
    assert d.x_train.shape == (20, 28, 28, 1) and d.y_test.shape == (20,)
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1


def test_idx_loader_errors(tmp_path):
    with pytest.raises(datasets.DatasetError, match=f"missing train-images-idx3-ubyte.*{tmp_path}"):
        datasets.load("mnist", str(tmp_path))
    _fake_mnist(tmp_path)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(datasets.DatasetError, match="truncated or corrupt"):
        datasets.load("mnist", str(tmp_path))
    with pytest.raises(datasets.DatasetError, match="unknown dataset 'svhn'; known"):
        datasets.load("svhn")


def test_cifar10_loader(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, 4)),
        }
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    d = datasets.load("cifar10", str(tmp_path))
    assert d.x_train.shape == (20, 32, 32, 3) and d.x_test.shape == (4, 32, 32, 3)
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(datasets.DatasetError, match="test_batch is not a CIFAR-10 python batch"):
        datasets.load("cifar10", str(tmp_path))
    with pytest.raises(datasets.DatasetError, match="needs --data-dir"):
        datasets.load("cifar10")


def test_text_and_digits():
    d = datasets.load_text(context=32)
    assert d.x_train.shape[1] == 32 and d.num_classes > 50  # pydoc's topics ship with Python
    assert np.array_equal(d.x_train[:, 1:], d.y_train[:, :-1])
    digits = datasets.load("digits")
    assert digits.x_train.shape == (1437, 8, 8, 1) and digits.num_classes == 10


@pytest.mark.parametrize(
    "name,shape",
    [
        ("mlp", (2, 8, 8, 1)),
        ("lenet5", (2, 28, 28, 1)),
        ("resnet8", (2, 16, 16, 3)),
        ("transformer", (2, 16)),
    ],
)
def test_models_run_under_a_multiplier(name, shape):
    model = networks.build(name, 10 if name != "transformer" else 30)
    x = np.zeros(shape, np.int32 if name == "transformer" else np.float32) + (
        0 if name == "transformer" else 0.5
    )
    params = model.init(jax.random.key(0), x)
    report = []
    with ax.using(ax.mitchell(5)):
        y = model.apply(params, x)
    ax.approximate(model.apply, ax.mitchell(5), report=report)(params, x)
    assert y.shape[0] == 2 and np.all(np.isfinite(y))
    if name == "transformer":
        paths = " ".join(r.path for r in report)
        assert "MultiHeadDotProductAttention" in paths  # attention products approximate


def test_sweep_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "approxjax",
            "sweep",
            "--model",
            "mlp",
            "--epochs",
            "2",
            "--multipliers",
            "mitchell5,mbm5,truncated3",
            "--train-limit",
            "256",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert "mitchell5" in proc.stdout and "float32" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"float32", "mitchell5", "mbm5", "truncated3"}
    assert results["config"]["seed"] == 0 and "jax" in results["versions"]
    assert len(results["runs"]["mbm5"]["accuracy_curve"]) == 2
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "results.csv").read_text().count("\n") == 5
    # Resume: two more epochs continue from the checkpoints.
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "approxjax",
            "sweep",
            "--model",
            "mlp",
            "--epochs",
            "3",
            "--multipliers",
            "mitchell5,mbm5,truncated3",
            "--train-limit",
            "256",
            "--out",
            str(out),
            "--resume",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert "resumed after epoch 2" in resumed.stdout
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]["mbm5"]["accuracy_curve"]) == 3
    report = subprocess.run(
        [sys.executable, "-m", "approxjax", "report", str(out / "results.json")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert "mbm5" in report.stdout


def test_sweep_modes_match_separate_runs(tmp_path):
    cfg = experiment.SweepConfig(
        model="mlp",
        multipliers=["mitchell4", "mbm4"],
        epochs=1,
        train_limit=128,
        out_dir="",
        mode="inference",
    )
    res = experiment.run_sweep(cfg, progress=lambda m: None)
    assert set(res["runs"]) == {"float32", "mitchell4", "mbm4"}
    tuned = experiment.run_sweep(
        experiment.SweepConfig(**{**cfg.__dict__, "mode": "finetune"}), progress=lambda m: None
    )
    assert len(tuned["runs"]["mbm4"]["accuracy_curve"]) == 2  # before and after fine-tuning
    with pytest.raises(ValueError, match="must include 'forward'"):
        experiment.run_sweep(
            experiment.SweepConfig(
                **{**cfg.__dict__, "mode": "train", "approximate": ["input_grad"]}
            ),
            progress=lambda m: None,
        )


def test_sweep_multiplier_specs(tmp_path):
    luts = __import__("pathlib").Path(__file__).resolve().parents[1] / "luts"
    mult = experiment.load_multiplier(f"{luts / 'mitchell.c'}@mitchell_mul:3")
    np.testing.assert_array_equal(mult.lut, ax.mitchell(3).lut)
    path = ax.save_lut(ax.mbm(4), tmp_path / "mbm4.npz")
    assert experiment.load_multiplier(str(path)).name == "mbm4"
    with pytest.raises(ValueError, match="unknown multiplier 'booth7'"):
        experiment.load_multiplier("booth7")
