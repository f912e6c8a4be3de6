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
from approxjax import datasets, networks
from approxjax._src.runner import config as experiment_config
from approxjax._src.runner import specs, sweep


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
        ("resnet18", (2, 16, 16, 3)),
        ("resnet50", (2, 64, 64, 3)),
        ("vit_tiny", (2, 16, 16, 3)),
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


def _cli(*argv, cwd, check=True):
    return subprocess.run(
        [sys.executable, "-m", "approxjax", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=check,
    )


SWEEP = ("sweep", "--model", "mlp", "--epochs", "2", "--train-limit", "256", "--progress", "off")


def test_sweep_end_to_end_and_resume(tmp_path):
    out = tmp_path / "run"
    mults = ("--multipliers", "mitchell5,mbm5,truncated3")
    proc = _cli(*SWEEP, *mults, "--out", str(out), cwd=tmp_path)
    assert "mitchell5" in proc.stdout and "float32" in proc.stdout
    assert "256 of 1437 train" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"float32", "mitchell5", "mbm5", "truncated3"}
    assert results["config"]["seed"] == 0 and "jax" in results["versions"]
    assert results["runs"]["mbm5"]["epochs"] == [1, 2]
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "results.csv").read_text().count("\n") == 5
    # Killed during epoch 2: every group's last finished epoch is 1.
    for state in (out / "checkpoints").glob("*/state.json"):
        saved = json.loads(state.read_text())
        saved["epoch"] = 1
        saved["history"] = {k: v[:1] for k, v in saved["history"].items()}
        state.write_text(json.dumps(saved))
    (out / "results.json").unlink()
    resumed = _cli(*SWEEP, *mults, "--out", str(out), "--resume", cwd=tmp_path)
    assert "resumed after epoch 1" in resumed.stdout
    again = json.loads((out / "results.json").read_text())
    for name, run in results["runs"].items():  # the same numbers as the uninterrupted run
        assert again["runs"][name]["accuracy_curve"] == run["accuracy_curve"], name
    report = _cli("report", str(out / "results.json"), cwd=tmp_path)
    assert "mbm5" in report.stdout


def test_resume_refuses_another_runs_checkpoints(tmp_path):
    out = tmp_path / "run"
    _cli(*SWEEP, "--multipliers", "truncated5", "--out", str(out), cwd=tmp_path)
    for flag in (
        ("--multipliers", "mitchell5"),
        ("--multipliers", "truncated5", "--learning-rate", "0.01"),
        ("--multipliers", "truncated5", "--seed", "3"),
    ):
        argv = list(SWEEP) + list(flag) + ["--out", str(out), "--resume"]
        bad = _cli(*argv, cwd=tmp_path, check=False)
        assert bad.returncode == 1, bad.stdout
        assert "cannot resume" in bad.stderr and "saved" in bad.stderr, bad.stderr
        assert "resumed" not in bad.stdout
    more = _cli(*SWEEP[:4], "3", *SWEEP[5:], "--multipliers", "truncated5", "--out", str(out),
                "--resume", cwd=tmp_path, check=False)  # fmt: skip
    assert more.returncode == 1 and "epochs: saved 2, now 3" in more.stderr


def test_new_run_refuses_a_folder_with_another_run(tmp_path):
    out = tmp_path / "run"
    _cli(*SWEEP, "--multipliers", "truncated5", "--out", str(out), cwd=tmp_path)
    again = _cli(*SWEEP, "--multipliers", "mitchell5", "--out", str(out), cwd=tmp_path, check=False)
    assert again.returncode == 1 and "holds another run's results" in again.stderr
    assert again.stderr.count("approxjax: error:") == 1 and "Traceback" not in again.stderr
    moved = _cli(*SWEEP, "--multipliers", "mitchell5", "--out", str(out), "--on-existing", "move",
                 cwd=tmp_path)  # fmt: skip
    assert "mitchell5" in moved.stdout
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "results.json").exists()
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert set(runs) == {"float32", "mitchell5"}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["float32", "m5"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (("--epochs", "0"), "--epochs must be an integer >= 1; got 0"),
        (("--batch-size", "0"), "--batch-size must be an integer >= 1; got 0"),
        (("--batch-size", "-5"), "--batch-size must be an integer >= 1; got -5"),
        (("--train-limit", "0"), "--train-limit must be an integer >= 1; got 0"),
        (("--mode", "finetune", "--finetune-epochs", "-1"), "--finetune-epochs must be"),
        (("--approximate", "input_grad"), "--approximate takes forward (required)"),
        (("--exact-layer", "Dense_("), "--exact-layer 'Dense_(' is not a regular expression"),
        (("--exact-layer", "NoSuchLayer"), "policy pattern(s) ['NoSuchLayer'] matched no"),
        (("--mesh", "bogus"), "--mesh 'bogus': each part must be"),
        (("--mesh", "sweep=2,data=2"), "--mesh 'sweep=2,data=2' needs 4 devices; 1 are visible"),
        (("--multipliers", ","), "--multipliers needs one or more"),
        (("--multipliers", "mitchell5,mitchell5"), "--multipliers names 'mitchell5' twice"),
        (("--multipliers", "drum5,drum5:k=4"), "are the same multiplier (drum5:k=4)"),
        (("--out", "/proc/approxjax-cannot-write"), "is not writable"),
        (("--formats", "bf16,e9m3"), "--formats 'e9m3': exponent_bits must be"),
        (("--formats", "bf16,bf16"), "--formats names 'bf16' twice"),
        (("--multipliers", "mitchell5+acc=fp7"), "'mitchell5+acc=fp7': accumulator: unknown"),
        (("--multipliers", "mitchell5+size=2"), "unknown option 'size'"),
        (("--multipliers", "mitchell5+adder=loax"), "adder must be loaK"),
        (("--multipliers", "mitchell5+acc_rounding=up"), "rounding must be one of"),
        (("--multipliers", "exact"), "'exact' is float32 itself"),
        (("--multipliers", "exact+bf16", "--formats", "bf16"), "are the same multiplier"),
        (("--method", "native"), "--method native: method='native': mitchell5 has no exact"),
        (("--method", "fast", "--surrogate-rank", "0"), "--surrogate-rank must be an integer"),
        (("--multipliers", "lowblock5+acc=bf16", "--method", "native"), "cannot simulate product"),
        (("--quantize", "int17"), "--quantize must be int<bits> or uint<bits>"),
        (("--quantize", "int8", "--multipliers", "mitchell4s"), "but --quantize is int8"),
        (("--multipliers", "mitchell8s+fast"), "unknown option 'fast' for an integer"),
        (("--multipliers", "mitchell8s+grad=sign"), "gradient must be one of"),
        (("--multipliers", "mitchell8u+grad=quantized"), "quantizes signed gradients"),
        (("--multipliers", "mitchell8s", "--method", "native"), "run by their tables"),
        (("--multipliers", "mitchell8s", "--approximate", "forward"), "chosen by +grad="),
        (("--multipliers", "exact8s,exact8s+power_mW=1"), "same multiplier"),
        (("--multipliers", "mitchell8s+calib=learned", "--first-exact"), "learned scales are"),
    ],
)
def test_bad_settings_fail_before_training(tmp_path, argv, message):
    base = ["sweep", "--model", "mlp", "--multipliers", "mitchell5", "--epochs", "1",
            "--progress", "off", "--out", str(tmp_path / "out")]  # fmt: skip
    proc = _cli(*base, *argv, cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("approxjax: error:"), proc.stderr
    assert message in lines[0], lines[0]
    assert "epoch" not in proc.stdout  # nothing trained


def test_sweep_modes_match_separate_runs(tmp_path):
    cfg = experiment_config.SweepConfig(
        model="mlp",
        multipliers=["mitchell4", "mbm4"],
        epochs=1,
        train_limit=128,
        out_dir="",
        mode="inference",
    )
    res = sweep.run_sweep(cfg, log=lambda m: None, show_progress=False)
    assert set(res["runs"]) == {"float32", "mitchell4", "mbm4"}
    tuned = sweep.run_sweep(
        experiment_config.SweepConfig(**{**cfg.__dict__, "mode": "finetune"}),
        log=lambda m: None,
        show_progress=False,
    )
    assert tuned["runs"]["mbm4"]["epochs"] == [1, 2]  # before and after fine-tuning
    assert tuned["runs"]["mbm4"]["before_accuracy"] == res["runs"]["mbm4"]["test_accuracy"]
    assert tuned["runs"]["float32"]["epochs"] == [1, 2]  # float32 fine-tuned as long
    with pytest.raises(ValueError, match="--approximate takes forward"):
        sweep.run_sweep(
            experiment_config.SweepConfig(
                **{**cfg.__dict__, "mode": "train", "approximate": ["input_grad"]}
            ),
            log=lambda m: None,
            show_progress=False,
        )


def test_sweep_multiplier_specs(tmp_path):
    luts = __import__("pathlib").Path(__file__).resolve().parents[1] / "luts"
    mult = specs.load_multiplier(f"{luts / 'mitchell.c'}@mitchell_mul:3")
    np.testing.assert_array_equal(mult.lut, ax.mitchell(3).lut)
    path = ax.save_lut(ax.mbm(4), tmp_path / "mbm4.npz")
    assert specs.load_multiplier(str(path)).name == "mbm4"
    with pytest.raises(ValueError, match="unknown multiplier 'booth7'"):
        specs.load_multiplier("booth7")
    plain = specs.load_arithmetic("mitchell3")  # no options: the multiplier itself
    assert isinstance(plain, ax.Multiplier) and plain.name == "mitchell3"
    a = specs.load_arithmetic(
        "mitchell3+lhs=e4m3+rhs=e5m2+product=bf16+adder=loa4+rounding=toward_zero"
    )
    s = a.spec
    assert (s.lhs.name, s.rhs.name, s.product.name, s.adder, s.operand_rounding) == (
        "e4m3",
        "e5m2",
        "bfloat16",
        ax.LOA(4),
        "toward_zero",
    )
    assert specs.describe(a)["adder"] == "loa4" and specs.describe(a)["accumulator"] == "float32"
    noisy = specs.load_arithmetic("exact+bf16+acc_rounding=stochastic", key_seed=3)
    assert noisy.multiplier is None and noisy.key is not None


def test_sweep_fast_mode_records_methods_and_residuals(tmp_path):
    """--method fast: exact low-rank tables natively as they are, the others
    by their surrogates, and results.json says which, with the residual."""
    cfg = experiment_config.SweepConfig(
        model="mlp",
        multipliers=["lowblock5", "mitchell5"],
        method="fast",
        surrogate_rank=3,
        epochs=1,
        train_limit=128,
        out_dir=str(tmp_path / "out"),
    )
    res = sweep.run_sweep(cfg, log=lambda m: None, show_progress=False)
    assert list(res["runs"]) == ["float32", "lowblock5:k=2[native]", "mitchell5~r3[native]"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    record = {m["spec"]: m for m in saved["multipliers"]}
    assert record["lowblock5"]["runs_as"] == "native" and record["lowblock5"]["rank"] == 2
    assert record["lowblock5"]["surrogate"] is None
    residual = record["mitchell5"]["surrogate"]
    assert record["mitchell5"]["rank"] == 3 and residual["of"] == "mitchell5"
    again = ax.surrogate(ax.mitchell(5), rank=3).metadata["surrogate"]
    assert residual == json.loads(json.dumps(again))
    assert saved["config"]["method"] == "fast"


def test_sweep_formats_and_arithmetic_specs(tmp_path):
    cfg = experiment_config.SweepConfig(
        model="mlp",
        multipliers=[
            "mitchell3+e4m3+acc=bf16",
            "mbm3+e4m3+acc=bf16",
            "exact+bf16+acc_rounding=stochastic",
        ],
        formats=["fp32", "bf16", "e4m3"],
        epochs=1,
        train_limit=128,
        out_dir=str(tmp_path / "out"),
    )
    res = sweep.run_sweep(cfg, log=lambda m: None, show_progress=False)
    names = ["mitchell3[e4m3 x e4m3, acc bfloat16]", "mbm3[e4m3 x e4m3, acc bfloat16]",
             "exact[bfloat16 x bfloat16, acc float32 stochastic]", "exact[bfloat16 x bfloat16]",
             "exact[e4m3 x e4m3]"]  # fmt: skip
    assert list(res["runs"]) == ["float32", *names]  # fp32 is the baseline itself
    # One vmapped group for the two tables that share formats; one run each otherwise.
    groups = [res["runs"][n]["group"] for n in names]
    assert groups[0] == groups[1] == "m3-e4m3-x-e4m3-acc-bfloat16"
    assert len(set(groups[1:])) == 4
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    record = {m["name"]: m for m in saved["multipliers"]}
    assert record[names[0]]["lhs"] == "e4m3" and record[names[0]]["accumulator"] == "bfloat16"
    assert record["exact[e4m3 x e4m3]"]["multiplier"] is None
    assert saved["config"]["formats"] == ["fp32", "bf16", "e4m3"]
    base = res["runs"]["float32"]["test_loss"]
    assert res["runs"]["exact[e4m3 x e4m3]"]["test_loss"] != base  # the format is applied
    # The same run through the library: a format run is Arithmetic(lhs=F, rhs=F).
    inference = sweep.run_sweep(
        experiment_config.SweepConfig(
            **{**cfg.__dict__, "multipliers": [], "formats": ["e4m3"], "out_dir": "",
               "mode": "inference"}
        ),
        log=lambda m: None,
        show_progress=False,
    )  # fmt: skip
    trainer_data = sweep.datasets.load("digits")
    model = sweep.networks.build("mlp", trainer_data.num_classes)
    params = sweep.train_group(
        sweep.Trainer(
            experiment_config.SweepConfig(**{**cfg.__dict__, "out_dir": ""}),
            model, trainer_data, sweep.Placement({"sweep": 1, "data": 1}), False,
        ),
        "float32", None, model.init(jax.random.key(0), trainer_data.x_train[:2]), 1, None,
        lambda m: None,
    )[0]  # fmt: skip
    e4m3 = ax.Arithmetic(lhs="e4m3", rhs="e4m3")
    logits = ax.approximate(model.apply, e4m3)(params, trainer_data.x_test)
    accuracy = float(np.mean(np.argmax(logits, -1) == trainer_data.y_test))
    assert inference["runs"]["exact[e4m3 x e4m3]"]["test_accuracy"] == pytest.approx(accuracy)


LUTS = __import__("pathlib").Path(__file__).resolve().parents[1] / "luts"


def test_integer_multiplier_specs():
    """Integer specs: catalog names, designs completed by --quantize, C models
    with their widths, +options into a Quantized GEMM, and what results.json
    records of one."""
    q8 = specs.parse_quantize("int8")
    assert q8 == (8, True) and specs.parse_quantize("uint4") == (4, False)
    c_model = specs.load_multiplier(f"{LUTS / 'int_mitchell.c'}@mitchell_imul:u8x4")
    same = ax.integer.mitchell((8, 4), signed=False)
    assert (c_model.bits, c_model.signed) == ((8, 4), (False, False))
    np.testing.assert_array_equal(c_model.table, same.table)
    assert specs.load_multiplier("drum_k3", quantize=(6, False)).name == "drum6u_k3"
    assert specs.load_multiplier("mitchell7").name == "mitchell7"  # float names stay float
    q = specs.load_arithmetic(
        "drum8s_k4+grad=lut+rank=2+calib=percentile+percentile=99.9+asym+per_tensor+power_mW=0.25",
        quantize=q8,
    )
    assert isinstance(q, ax.Quantized) and q.gradient == "lut" and q.lut_rank == 2
    assert (q.lhs.symmetric, q.rhs.symmetric, q.rhs.per_channel) == (False, False, False)
    assert q.lhs.calibration == q.rhs.calibration == "percentile" and q.rhs.percentile == 99.9
    assert q.name == "drum8s_k4/lut/asym/per_tensor/p99.9/rank2"
    assert q.multiplier.cost == {"power_mW": 0.25}
    assert ax.integer.get("drum8s_k4").cost == {}  # the catalog's own is untouched
    record = specs.describe(q)
    assert record["cost"] == {"power_mW": 0.25} and record["bits"] == [8, 8]
    assert record["gradient"] == "lut" and record["rhs_quantization"]["per_channel"] is False
    learned = specs.load_arithmetic("mitchell8s+calib=learned+init=percentile+percentile=99")
    assert learned.lhs.initial == learned.rhs.initial == "percentile"
    assert learned.name == "mitchell8s/ste/learned-from-p99"
    plain = specs.load_arithmetic("kulkarni8s")
    assert isinstance(plain, ax.Quantized) and plain.name == "kulkarni8s/ste"
    for bad, message in [
        (f"{LUTS / 'int_mitchell.c'}@mitchell_imul:s17", "2 to 16 bits"),
        (f"{LUTS / 'int_mitchell.c'}@mitchell_imul:q8", "file.c@function:s8"),
        ("kulkarni8s+rank=two", "rank must be a number; got 'two'"),
        ("kulkarni8s+e4m3", "unknown option 'e4m3'"),
        ("kulkarni8s+init=mse", "initial='mse' sets where a learned scale starts"),
    ]:
        with pytest.raises(ValueError, match=message):
            specs.load_arithmetic(bad)


def test_quantized_sweep_stacks_and_matches_single_runs(tmp_path):
    """--quantize int8: the exact int8 baseline first, the integer runs with the
    same settings in one vmapped group, the same accuracies as runs of one
    multiplier alone, and the accuracy-against-power plot of the costed ones."""
    cfg = experiment_config.SweepConfig(
        model="mlp",
        quantize="int8",
        multipliers=["mitchell+power_mW=0.2", "kulkarni+power_mW=0.3", "drum_k3+grad=lut"],
        epochs=1,
        train_limit=128,
        mode="inference",
        out_dir=str(tmp_path / "out"),
    )
    res = sweep.run_sweep(cfg, log=lambda m: None, show_progress=False)
    names = ["exact8s/ste", "mitchell8s/ste", "kulkarni8s/ste", "drum8s_k3/lut"]
    assert list(res["runs"]) == ["float32", *names]
    assert {res["runs"][n]["group"] for n in names[:3]} == {"int8s-ste"}
    assert res["runs"]["drum8s_k3/lut"]["group"] == "int8s-lut"
    alone = sweep.run_sweep(
        experiment_config.SweepConfig(
            **{**cfg.__dict__, "multipliers": ["kulkarni"], "out_dir": ""}
        ),
        log=lambda m: None,
        show_progress=False,
    )
    for name in ("exact8s/ste", "kulkarni8s/ste"):
        assert alone["runs"][name]["test_loss"] == pytest.approx(
            res["runs"][name]["test_loss"], rel=1e-6
        )
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    record = {m["name"]: m for m in saved["multipliers"]}
    assert record["kulkarni8s/ste"]["cost"] == {"power_mW": 0.3}
    assert record["exact8s/ste"]["cost"] == {}
    png = tmp_path / "out" / "pareto_power_mW.png"
    assert png.stat().st_size > 10_000
    # approxjax report: the figure asked for, or an error naming those there are.
    proc = _cli("report", str(tmp_path / "out" / "results.json"), "--cost", "area_um2",
                cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode == 1 and "these have: power_mW" in proc.stderr


def test_sweep_of_sixteen_bit_function_models(tmp_path):
    """--quantize int16: the exact baseline and a C model as function models,
    each alone in its group; both exact, so the same loss."""
    model = tmp_path / "mul16.c"
    model.write_text("#include <stdint.h>\nint64_t m16(int16_t a, int16_t b) { return a * b; }")
    cfg = experiment_config.SweepConfig(
        model="mlp",
        quantize="int16",
        multipliers=[f"{model}@m16:s16"],
        epochs=1,
        train_limit=128,
        mode="inference",
        out_dir=str(tmp_path / "out"),
    )
    res = sweep.run_sweep(cfg, log=lambda m: None, show_progress=False)
    assert list(res["runs"]) == ["float32", "exact16s/ste", "m16/ste"]
    assert res["runs"]["m16/ste"]["group"] != res["runs"]["exact16s/ste"]["group"]
    assert res["runs"]["m16/ste"]["test_loss"] == res["runs"]["exact16s/ste"]["test_loss"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    record = {m["name"]: m for m in saved["multipliers"]}
    assert record["m16/ste"]["runs_as"] == "integer function model"


def test_sweep_with_learned_scales(tmp_path):
    """+calib=learned: the layers' scales are parameters, created from the
    first batch for each group (a stack of two shares them) and trained."""
    cfg = experiment_config.SweepConfig(
        model="lenet5",
        quantize="int4",
        multipliers=["drum_k2", "drum_k2+calib=learned", "mitchell+calib=learned"],
        epochs=1,
        train_limit=256,
        out_dir=str(tmp_path / "out"),
    )
    res = sweep.run_sweep(cfg, log=lambda m: None, show_progress=False)
    learned = ["drum4s_k2/ste/learned", "mitchell4s/ste/learned"]
    assert {res["runs"][n]["group"] for n in learned} == {"int4s-ste-learned"}
    assert res["runs"]["drum4s_k2/ste"]["group"] == "int4s-ste"
    assert res["runs"][learned[0]]["test_loss"] != res["runs"]["drum4s_k2/ste"]["test_loss"]
    assert (tmp_path / "out" / "checkpoints" / "int4s-ste-learned").is_dir()


def test_pareto_front_against_brute_force():
    from approxjax._src.runner.outputs import pareto_front

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        costs = rng.integers(0, 5, n).astype(float)  # ties in cost and accuracy
        accs = rng.integers(0, 5, n) / 4
        points = [(f"r{i}", costs[i], accs[i]) for i in range(n)]
        front = pareto_front(points)

        undominated = {
            (p[1], p[2])
            for p in points
            if not any(q[1] <= p[1] and q[2] >= p[2] and q[1:] != p[1:] for q in points)
        }
        assert {(p[1], p[2]) for p in front} == undominated
        assert len(front) == len(undominated)  # one point per distinct (cost, accuracy)
        assert [p[1] for p in front] == sorted(p[1] for p in front)


def test_init_params_are_evaluated_and_fine_tuned(tmp_path):
    """--init-params: parameters trained elsewhere (.npz or orbax) are evaluated
    as they are (no float32 training first), under each multiplier, and
    fine-tuned; a tree of another model is refused, naming its leaves."""
    import optax
    import orbax.checkpoint as ocp

    from approxjax._src.runner.params import save_params
    from approxjax.training import make_train_step

    data = datasets.load("digits", None, 0)
    model = networks.build("mlp", 10)
    params = model.init(jax.random.key(7), data.x_train[:2])
    opt = optax.adam(1e-2)
    state = opt.init(params)
    step = jax.jit(make_train_step(model.apply, opt))
    for i in range(20):  # "elsewhere": a few steps by hand
        batch = slice(64 * i, 64 * i + 64)
        params, state, _, _ = step(params, state, data.x_train[batch], data.y_train[batch], None)
    npz = save_params(params, tmp_path / "trained.npz")
    folder = tmp_path / "trained_orbax"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder.resolve(), params)
    checkpointer.wait_until_finished()

    def accuracy(mult):
        with ax.using(mult):
            logits = model.apply(params, data.x_test)
        return float(np.mean(np.argmax(np.asarray(logits), -1) == data.y_test))

    base = experiment_config.SweepConfig(
        model="mlp", multipliers=["mitchell3"], epochs=3, mode="inference", out_dir=""
    )
    for source in (npz, folder):
        cfg = experiment_config.SweepConfig(**{**base.__dict__, "init_params": str(source)})
        res = sweep.run_sweep(cfg, log=lambda m: None, show_progress=False)
        assert res["runs"]["float32"]["epochs"] == [0]  # evaluated, not trained
        assert res["runs"]["float32"]["test_accuracy"] == pytest.approx(accuracy(None), abs=1e-6)
        want = accuracy(ax.mitchell(3))
        assert abs(res["runs"]["mitchell3"]["test_accuracy"] - want) <= 1 / 360 + 1e-9
    tuned = sweep.run_sweep(
        experiment_config.SweepConfig(
            **{**base.__dict__, "init_params": str(npz), "mode": "finetune"}
        ),
        log=lambda m: None,
        show_progress=False,
    )
    assert tuned["runs"]["mitchell3"]["epochs"] == [0, 1]
    assert (
        tuned["runs"]["mitchell3"]["before_accuracy"] == res["runs"]["mitchell3"]["test_accuracy"]
    )
    other = save_params(networks.build("cnn", 10).init(jax.random.key(0), data.x_train[:2]),
                        tmp_path / "cnn.npz")  # fmt: skip
    for path, message in [(other, "this model's parameters: missing params/Dense_2/bias"),
                          (tmp_path / "none.npz", "does not exist")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            sweep.run_sweep(
                experiment_config.SweepConfig(**{**base.__dict__, "init_params": str(path)}),
                log=lambda m: None,
                show_progress=False,
            )
