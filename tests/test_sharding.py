"""Approximate ops under JAX's own distribution: jit with shardings, shard_map,
a 2-D sweep x data mesh, and a 2-process jax.distributed run over loopback.

The multi-device checks run in subprocesses (the forced device count has to be
set before JAX starts); each test asserts on one part of their report.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def _run(args, timeout=600, env=None):
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})},
        cwd=HERE,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def report():
    out = _run([str(HERE / "_sharded_worker.py")]).stdout
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def _kinds(collectives):
    return sorted({kind for kind, _ in collectives})


def _elements(shape: str) -> int:
    dims = shape.split("[", 1)[1].split("]", 1)[0]
    return int(np.prod([int(d) for d in dims.split(",") if d]))


def test_eight_devices(report):
    assert report["devices"] == 8


def test_hlo_check_catches_an_all_gather_of_activations(report):
    # Without partitioning rules XLA gathers the whole batch to every device:
    # the checks below would see it.
    assert "all-gather" in _kinds(report["bare_ffi_collectives"])


def test_data_parallel_dense_runs_on_local_shards(report):
    r = report["dense"]
    assert _kinds(r["collectives"]) == ["all-reduce"]  # the weight-gradient reduction only
    assert r["forward_equal"] and r["input_grad_equal"]
    assert r["weight_grad_bound"] <= 1.0
    assert r["input_sharding"] == "P('data',)"


def test_data_parallel_conv_runs_on_local_shards(report):
    r = report["conv"]
    assert _kinds(r["collectives"]) == ["all-reduce"]
    assert r["forward_equal"] and r["input_grad_equal"]
    assert r["weight_grad_rel"] < 1e-5


def test_chunked_conv_stays_on_local_shards(report):
    r = report["conv_chunked"]
    assert r["chunked"]
    assert _kinds(r["collectives"]) == ["all-reduce"]
    assert r["forward_equal"] and r["input_grad_equal"]
    assert r["weight_grad_rel"] < 1e-5


def test_elementwise_multiply_needs_no_collective(report):
    assert report["multiply"]["collectives"] == []
    assert report["multiply"]["equal"]


def test_fsdp_gathers_weights_never_activations(report):
    r = report["fsdp"]
    weight_size = 48 * 24
    gathers = [shape for kind, shape in r["collectives"] if kind == "all-gather"]
    assert gathers and all(_elements(s) <= weight_size for s in gathers)
    assert r["forward_equal"] and r["weight_grad_bound"] <= 1.0


def test_training_step_has_only_float32_collectives(report):
    r = report["train_step"]
    assert _kinds(r["collectives"]) == _kinds(r["float32_collectives"]) == ["all-reduce"]
    assert r["logits_equal"]
    assert r["param_max_diff"] < 1e-6
    assert r["param_sharding"] == "P()"


def test_sweep_by_data_mesh(report):
    r = report["sweep_data"]
    assert _kinds(r["collectives"]) == ["all-reduce"]
    assert r["logits_equal"] and r["param_max_diff"] < 1e-6
    assert r["param_sharding"] == "P('sweep',)"
    assert r["logits_sharding"] == "P('sweep', 'data')"


def test_native_path_is_ordinary_xla_under_sharding(report):
    r = report["native"]
    assert r["custom_calls"] == 0
    assert _kinds(r["collectives"]) == ["all-reduce"]  # the weight gradient's sum
    assert r["input_sharding"] == "P('data',)"
    # Local shards: the same dots on fewer rows; the weight gradient sums shards.
    assert r["forward_max_diff"] < 1e-5 and r["input_grad_max_diff"] < 1e-5
    assert r["weight_grad_max_diff"] < 1e-4


def test_shard_map_varying_axes_and_replicated_cotangents(report):
    r = report["shard_map"]
    assert r["forward_equal"] and r["input_grad_equal"]
    # The replicated weight's cotangent is summed over the data axis.
    assert r["weight_grad_bound"] <= 1.0


def test_explicit_sharding_types(report):
    r = report["explicit"]
    assert r["forward_equal"] and r["weight_grad_bound"] <= 1.0
    assert r["output_sharding"] == "P('data', None)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_over_loopback_equal_one(tmp_path):
    worker = str(HERE / "_distributed_worker.py")
    port = str(_free_port())
    multi, single = tmp_path / "multi.npz", tmp_path / "single.npz"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(pid), port, str(multi)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=HERE,
        )
        for pid in (0, 1)
    ]
    try:
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    _run([worker, "single", "-", str(single)])
    a, b = np.load(multi), np.load(single)
    assert int(a["processes"]) == 2 and int(a["devices"]) == 2 and int(b["processes"]) == 1
    np.testing.assert_array_equal(a["first_logits"], b["first_logits"])
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5)
    for key in a.files:
        if key.startswith("param"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_runner_mesh(tmp_path):
    out = _run(
        [
            "-m",
            "approxjax",
            "sweep",
            "--epochs",
            "1",
            "--train-limit",
            "256",
            "--multipliers",
            "mitchell7,truncated7",
            "--mesh",
            "sweep=2,data=4",
            "--out",
            str(tmp_path),
        ],
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    ).stdout
    assert "mesh sweep=2 x data=4 over 8 of 8 cpu device(s)" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mesh"] == {"sweep": 2, "data": 4}
    assert set(results["runs"]) == {"float32", "mitchell7", "truncated7"}


def test_mesh_spec_errors():
    from approxjax._src.runner.mesh import parse_mesh

    assert parse_mesh("auto", 8, 64) == {"sweep": 1, "data": 8}
    assert parse_mesh("auto", 8, 12) == {"sweep": 1, "data": 1}
    assert parse_mesh("sweep=4,data=2", 8, 64) == {"sweep": 4, "data": 2}
    with pytest.raises(ValueError, match="needs 16 devices; 8 are visible"):
        parse_mesh("sweep=4,data=4", 8, 64)
    with pytest.raises(ValueError, match="sweep=N or data=N"):
        parse_mesh("model=2", 8, 64)
    with pytest.raises(ValueError, match="--batch-size 10 does not split over data=4"):
        parse_mesh("data=4", 8, 10)
