"""The experiment runner behind ``approxjax sweep``: float32 against many multipliers.

It trains (or evaluates, or fine-tunes) a float32 baseline and every multiplier
on one dataset; multipliers with the same m train together as one vmapped
program. Each run writes ``results.json`` (configuration, versions, seed,
curves, final metrics), ``results.csv`` (one row per multiplier) and
``curves.png``, with orbax checkpoints after every epoch so a run resumes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from approxjax import datasets, multipliers, networks
from approxjax.multipliers import Multiplier
from approxjax.policy import Policy, using


@dataclasses.dataclass
class SweepConfig:
    model: str = "cnn"
    dataset: str = "digits"
    multipliers: Sequence[str] = ("truncated7", "mitchell7", "mbm7", "drum7")
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    mode: str = "train"  # train | inference | finetune
    finetune_epochs: int = 1
    approximate: Sequence[str] = ("forward", "input_grad", "weight_grad")
    exact_layers: Sequence[str] = ()
    first_exact: bool = False
    last_exact: bool = False
    data_dir: str | None = None
    train_limit: int | None = None
    out_dir: str = "approxjax-results"
    resume: bool = False
    mesh: str = "auto"  # "auto", "none", or e.g. "sweep=4,data=2"


MESH_AXES = ("sweep", "data")


def parse_mesh(spec: str, n_devices: int, batch_size: int) -> dict[str, int]:
    """Mesh axis sizes from ``spec``: ``"sweep=4,data=2"``, ``"auto"`` or ``"none"``.

    ``auto`` puts every visible device on the data axis when the batch divides
    evenly, and uses one device otherwise; ``none`` uses one device.
    """
    if spec == "none" or n_devices == 1:
        return {"sweep": 1, "data": 1}
    if spec == "auto":
        data = n_devices if batch_size % n_devices == 0 else 1
        return {"sweep": 1, "data": data}
    sizes = {"sweep": 1, "data": 1}
    for part in spec.split(","):
        name, eq, value = part.strip().partition("=")
        if name not in MESH_AXES or not eq or not value.isdigit() or int(value) < 1:
            raise ValueError(
                f"mesh spec {spec!r}: each part must be sweep=N or data=N with N >= 1; got {part!r}"
            )
        sizes[name] = int(value)
    used = sizes["sweep"] * sizes["data"]
    if used > n_devices:
        raise ValueError(
            f"mesh {spec!r} needs {used} devices; {n_devices} are visible "
            "(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)"
        )
    if batch_size % sizes["data"]:
        raise ValueError(
            f"batch size {batch_size} does not split over data={sizes['data']} devices"
        )
    return sizes


class _Placement:
    """Where a group's arrays live: stacked state and tables split over ``sweep``,
    batches over ``data``, everything else replicated; XLA partitions the step."""

    def __init__(self, sizes: dict[str, int]):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        n = sizes["sweep"] * sizes["data"]
        devices = np.asarray(jax.devices()[:n]).reshape(sizes["sweep"], sizes["data"])
        self.sizes = sizes
        self.mesh = Mesh(devices, MESH_AXES)
        self._named = lambda *spec: NamedSharding(self.mesh, PartitionSpec(*spec))

    def sweep_axis(self, count: int | None) -> str | None:
        """The sweep axis for a stack of ``count`` (None: not stacked), if it splits evenly."""
        if count is None or self.sizes["sweep"] == 1 or count % self.sizes["sweep"]:
            return None
        return "sweep"

    def state(self, tree, axis: str | None):
        return jax.device_put(tree, self._named(axis) if axis else self._named())

    def batch(self, array):
        data = self.sizes["data"]
        if data > 1 and len(array) % data == 0:
            return jax.device_put(array, self._named("data"))
        return jax.device_put(array, self._named())

    def describe(self) -> str:
        s, d = self.sizes["sweep"], self.sizes["data"]
        kind = jax.devices()[0].platform
        return (
            f"mesh sweep={s} x data={d} over {s * d} of {jax.device_count()} {kind} device(s) "
            f"({jax.process_count()} process(es)): multiplier stacks split over sweep, "
            f"batches over data"
        )


def load_multiplier(spec: str, m: int | None = None) -> Multiplier:
    """A multiplier from a spec: a catalog name (``mitchell7``, or ``mitchell`` with ``m``),
    an ``.npz`` LUT file, an ApproxTrain ``.bin`` file, or ``model.c@function:m``."""
    from approxjax import lut_files, models

    if spec.endswith(".npz"):
        return lut_files.load_lut(spec)
    if spec.endswith(".bin"):
        return lut_files.load_approxtrain(spec)
    path, at, rest = spec.partition("@")
    if at and path.endswith((".c", ".cc", ".cpp", ".cxx")):
        function, _, m = rest.partition(":")
        if not m.isdigit():
            raise ValueError(f"C model spec {spec!r} must be file.c@function:m")
        return models.from_c(path, function, int(m))
    return multipliers.get(spec, m)


def _policy(cfg: SweepConfig, mult: Multiplier | None) -> Policy | None:
    if mult is None:
        return None
    bad = set(cfg.approximate) - {"forward", "input_grad", "weight_grad"}
    if bad or "forward" not in cfg.approximate:
        raise ValueError(
            f"approximate GEMMs must include 'forward' and be among forward, input_grad, "
            f"weight_grad; got {list(cfg.approximate)}"
        )
    return Policy(
        mult,
        rules=[(p, None) for p in cfg.exact_layers],
        first_exact=cfg.first_exact,
        last_exact=cfg.last_exact,
        input_grad="forward" if "input_grad" in cfg.approximate else None,
        weight_grad="forward" if "weight_grad" in cfg.approximate else None,
    )


class _Trainer:
    def __init__(self, cfg: SweepConfig, model, data: datasets.Dataset, placement: _Placement):
        self.cfg, self.model, self.data, self.placement = cfg, model, data, placement
        self.opt = optax.adam(cfg.learning_rate)

        def loss_fn(params, x, y, mult):
            with using(_policy(cfg, mult)):
                logits = model.apply(params, x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, jnp.mean(jnp.argmax(logits, -1) == y)

        def step(params, opt_state, x, y, mult):
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, mult)
            updates, opt_state = self.opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self._step, self._eval = step, loss_fn

    def compiled(self, stacked: bool):
        step, ev = self._step, self._eval
        if stacked:
            step = jax.vmap(step, in_axes=(0, 0, None, None, 0))
            ev = jax.vmap(ev, in_axes=(0, None, None, 0))
        return jax.jit(step), jax.jit(ev)

    def evaluate(self, ev, params, mult):
        x, y = self.data.x_test, self.data.y_test
        bs = max(self.cfg.batch_size, 256)
        losses, accs, weights = [], [], []
        for i in range(0, len(x), bs):
            xb, yb = self.placement.batch(x[i : i + bs]), self.placement.batch(y[i : i + bs])
            loss, acc = ev(params, xb, yb, mult)
            losses.append(np.asarray(loss))
            accs.append(np.asarray(acc))
            weights.append(len(x[i : i + bs]))
        w = np.asarray(weights, np.float64) / sum(weights)
        return np.tensordot(w, np.stack(losses), 1), np.tensordot(w, np.stack(accs), 1)


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def _run_group(trainer, label, mult, params0, epochs, progress, ckpt_root, history0=None):
    """Trains one group (float32, or a stack of same-m multipliers) for `epochs`."""
    cfg, data, place = trainer.cfg, trainer.data, trainer.placement
    stacked = mult is not None
    s = len(mult) if stacked else 1
    step, ev = trainer.compiled(stacked)
    params = jax.tree_util.tree_map(lambda a: jnp.stack([a] * s), params0) if stacked else params0
    opt_state = jax.vmap(trainer.opt.init)(params) if stacked else trainer.opt.init(params)
    axis = place.sweep_axis(s if stacked else None)
    if stacked and place.sizes["sweep"] > 1 and axis is None:
        progress(
            f"{label}: {s} multipliers do not split over sweep={place.sizes['sweep']}; "
            "replicating the stack"
        )
    params, opt_state = place.state(params, axis), place.state(opt_state, axis)
    mult = place.state(mult, axis) if stacked else None
    history = history0 or {"loss": [], "accuracy": [], "step_seconds": []}
    ckpt_dir = ckpt_root / label
    start = 0
    if cfg.resume and (ckpt_dir / "history.json").exists():
        saved = json.loads((ckpt_dir / "history.json").read_text())
        start = saved["epoch"]
        state = _checkpointer().restore(
            (ckpt_dir / f"epoch_{start}").resolve(), {"params": params, "opt_state": opt_state}
        )
        params, opt_state, history = state["params"], state["opt_state"], saved["history"]
        progress(f"{label}: resumed after epoch {start}")
    n = len(data.x_train) if cfg.train_limit is None else min(cfg.train_limit, len(data.x_train))
    steps = max(n // cfg.batch_size, 1)
    for epoch in range(start, epochs):
        order = np.random.default_rng(cfg.seed + epoch).permutation(n)
        t_steps = []
        for i in range(steps):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            t = time.perf_counter()
            params, opt_state, loss = step(
                params,
                opt_state,
                place.batch(data.x_train[idx]),
                place.batch(data.y_train[idx]),
                mult,
            )
            jax.block_until_ready(loss)
            if epoch > 0 or i > 0:  # skip the compiling first step
                t_steps.append(time.perf_counter() - t)
            if (i + 1) % max(steps // 4, 1) == 0:
                progress(
                    f"{label}: epoch {epoch + 1}/{epochs} step {i + 1}/{steps} "
                    f"loss {np.asarray(loss).mean():.4f}"
                )
        test_loss, test_acc = trainer.evaluate(ev, params, mult)
        history["loss"].append(np.atleast_1d(test_loss).tolist())
        history["accuracy"].append(np.atleast_1d(test_acc).tolist())
        history["step_seconds"].append(float(np.median(t_steps)) if t_steps else float("nan"))
        progress(
            f"{label}: epoch {epoch + 1} test accuracy "
            + ", ".join(f"{a:.4f}" for a in np.atleast_1d(test_acc))
        )
        if cfg.out_dir:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            ck = _checkpointer()
            ck.save(
                (ckpt_dir / f"epoch_{epoch + 1}").resolve(),
                {"params": params, "opt_state": opt_state},
                force=True,
            )
            ck.wait_until_finished()
            (ckpt_dir / "history.json").write_text(
                json.dumps({"epoch": epoch + 1, "history": history})
            )
    return params, history


def _versions() -> dict[str, str]:
    import flax

    from approxjax import __version__

    return {
        "approxjax": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
    }


def run_sweep(cfg: SweepConfig, progress=print) -> dict[str, Any]:
    """Runs a sweep (see the module docstring) and returns the results dict."""
    if cfg.mode not in ("train", "inference", "finetune"):
        raise ValueError(f"mode must be train, inference or finetune; got {cfg.mode!r}")
    data = datasets.load(cfg.dataset, cfg.data_dir, cfg.seed)
    model = networks.build(cfg.model, data.num_classes)
    mults = [load_multiplier(s) for s in cfg.multipliers]
    groups: dict[int, list[Multiplier]] = {}
    for m in mults:
        groups.setdefault(m.mantissa_bits, []).append(m)
    params0 = model.init(jax.random.key(cfg.seed), data.x_train[:2])
    placement = _Placement(parse_mesh(cfg.mesh, jax.device_count(), cfg.batch_size))
    trainer = _Trainer(cfg, model, data, placement)
    out = Path(cfg.out_dir)
    ckpt_root = (out / "checkpoints").resolve()
    progress(
        f"sweep: {cfg.model} on {data.name} ({len(data.x_train)} train, "
        f"{len(data.x_test)} test), mode {cfg.mode}, {len(mults)} multipliers in "
        f"{len(groups)} vmapped group(s); {placement.describe()}"
    )
    results: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "mesh": placement.sizes,
        "versions": _versions(),
        "runs": {},
    }
    base_params, base_hist = _run_group(
        trainer, "float32", None, params0, cfg.epochs, progress, ckpt_root
    )
    results["runs"]["float32"] = _summary(base_hist, 0)
    for m, members in sorted(groups.items()):
        stack = multipliers.stack(members)
        label = f"m{m}"
        if cfg.mode == "train":
            _, hist = _run_group(trainer, label, stack, params0, cfg.epochs, progress, ckpt_root)
        else:
            _, ev = trainer.compiled(True)
            count = len(members)
            ps = jax.tree_util.tree_map(lambda a, c=count: jnp.stack([a] * c), base_params)
            axis = placement.sweep_axis(count)
            ps, placed = placement.state(ps, axis), placement.state(stack, axis)
            loss, acc = trainer.evaluate(ev, ps, placed)
            hist = {
                "loss": [np.atleast_1d(loss).tolist()],
                "accuracy": [np.atleast_1d(acc).tolist()],
                "step_seconds": [float("nan")],
            }
            if cfg.mode == "finetune":
                _, tuned = _run_group(
                    trainer,
                    label + "-finetune",
                    stack,
                    base_params,
                    cfg.finetune_epochs,
                    progress,
                    ckpt_root,
                )
                for key in hist:
                    hist[key] += tuned[key]
        for i, mult in enumerate(members):
            results["runs"][mult.name] = _summary(hist, i)
    base = results["runs"]["float32"]
    for run in results["runs"].values():
        run["accuracy_change"] = run["test_accuracy"] - base["test_accuracy"]
    if cfg.out_dir:
        write_outputs(results, out)
    return results


def _summary(hist, i) -> dict[str, Any]:
    acc = [a[i] for a in hist["accuracy"]]
    loss = [v[i] for v in hist["loss"]]
    secs = [s for s in hist["step_seconds"] if s == s]
    return {
        "test_accuracy": acc[-1],
        "test_loss": loss[-1],
        "accuracy_curve": acc,
        "loss_curve": loss,
        "step_seconds": float(np.median(secs)) if secs else None,
    }


def format_results(results: dict[str, Any]) -> str:
    head = f"{'multiplier':<22} {'test acc':>9} {'vs f32':>8} {'test loss':>10} {'ms/step':>9}"
    lines = [head, "-" * len(head)]
    for name, r in results["runs"].items():
        ms = f"{1e3 * r['step_seconds']:.1f}" if r.get("step_seconds") else "-"
        lines.append(
            f"{name:<22} {r['test_accuracy']:>9.4f} {r['accuracy_change']:>+8.4f} "
            f"{r['test_loss']:>10.4f} {ms:>9}"
        )
    return "\n".join(lines)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """results.json, results.csv and curves.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "multiplier",
                "test_accuracy",
                "accuracy_change",
                "test_loss",
                "step_seconds",
                "model",
                "dataset",
                "mode",
                "epochs",
                "seed",
            ]
        )
        c = results["config"]
        for name, r in results["runs"].items():
            w.writerow(
                [
                    name,
                    r["test_accuracy"],
                    r["accuracy_change"],
                    r["test_loss"],
                    r["step_seconds"],
                    c["model"],
                    c["dataset"],
                    c["mode"],
                    c["epochs"],
                    c["seed"],
                ]
            )
    plot_curves(results, out / "curves.png")


def plot_curves(results: dict[str, Any], path: Path) -> None:
    from approxjax.characterize import _pyplot

    plt = _pyplot()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results["runs"].items():
        epochs = range(1, len(r["accuracy_curve"]) + 1)
        style = {"color": "k", "lw": 2} if name == "float32" else {}
        a0.plot(epochs, r["accuracy_curve"], marker="o", label=name, **style)
        a1.plot(epochs, r["loss_curve"], marker="o", label=name, **style)
    c = results["config"]
    a0.set_title(f"{c['model']} on {c['dataset']} ({c['mode']}): test accuracy")
    a1.set_title("test loss")
    for ax in (a0, a1):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    a0.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
