"""What a sweep leaves behind: results.json, results.csv, curves.png, and the table."""

from __future__ import annotations

import csv
import importlib.metadata
import io
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from approxjax._src.atomic import write_text_atomically

SCHEMA = "approxjax-results/2"
# A task's test metrics beyond accuracy and loss: key -> (column, label, decimals).
TASK_METRICS = {
    "bleu": ("BLEU", "BLEU (sacrebleu)", 2),
    "map50": ("mAP@.5", "mAP@0.5 (pycocotools)", 4),
    "map": ("mAP", "mAP@[.5:.95] (pycocotools)", 4),
}


def versions() -> dict[str, str]:
    import flax
    import jax
    import optax

    from approxjax._src.version import __version__

    return {
        "approxjax": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "sacrebleu": importlib.metadata.version("sacrebleu"),  # BLEU's definition
        "python": platform.python_version(),
        "backend": jax.default_backend(),
    }


def run_summary(history: dict[str, list], member: int, group: str, **extra) -> dict[str, Any]:
    """One run's entry of results.json from its group's history."""
    acc = [a[member] for a in history["accuracy"]]
    loss = [v[member] for v in history["loss"]]
    secs = [s for s in history.get("step_seconds", []) if s is not None and s == s]
    run = {
        "group": group,
        "test_accuracy": acc[-1],
        "test_loss": loss[-1],
        "epochs": list(history["epoch"]),
        "accuracy_curve": acc,
        "loss_curve": loss,
        "step_seconds": float(np.median(secs)) if secs else None,
    }
    for key in TASK_METRICS:  # a translator's BLEU, a detector's mAP
        if key in history:
            run[f"{key}_curve"] = [v[member] for v in history[key]]
            run[f"test_{key}"] = run[f"{key}_curve"][-1]
    return run | extra


def check_results(results: Any, source: str) -> dict[str, Any]:
    """Raises ValueError unless ``results`` is an approxjax results dict."""
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        found = results.get("schema") if isinstance(results, dict) else type(results).__name__
        raise ValueError(
            f"{source} is not an approxjax results file (schema {SCHEMA!r}; found {found!r})"
        )
    for name, run in results.get("runs", {}).items():
        missing = [
            k for k in ("test_accuracy", "test_loss", "accuracy_curve", "epochs") if k not in run
        ]
        if missing:
            raise ValueError(f"{source}: run {name!r} lacks {', '.join(missing)}")
    return results


def format_results(results: dict[str, Any]) -> str:
    """The results table (see the footnotes it prints)."""
    mode = results["config"]["mode"]
    base = results["runs"].get("float32", {}).get("test_accuracy")
    finetune = mode == "finetune"
    width = max([24, *(len(name) + 1 for name in results["runs"])])
    head = f"{'multiplier':<{width}} "
    head += f"{'before':>8} {'after':>8}" if finetune else f"{'test acc':>9}"
    head += f" {'vs f32':>8} {'test loss':>10} {'ms/step*':>9}"
    tasks = [k for k in TASK_METRICS if any(f"test_{k}" in r for r in results["runs"].values())]
    head += "".join(f" {TASK_METRICS[k][0]:>7}" for k in tasks)
    lines = [head, "-" * len(head)]
    for name, r in results["runs"].items():
        ms = f"{1e3 * r['step_seconds']:.1f}" if r.get("step_seconds") else "-"
        change = "-" if name == "float32" or base is None else f"{r['test_accuracy'] - base:+.4f}"
        row = f"{name:<{width}} "
        if finetune:
            before = r.get("before_accuracy")
            row += f"{before:>8.4f} " if before is not None else f"{'-':>8} "
            row += f"{r['test_accuracy']:>8.4f}"
        else:
            row += f"{r['test_accuracy']:>9.4f}"
        row += f" {change:>8} {r['test_loss']:>10.4f} {ms:>9}"
        row += "".join(f" {r.get(f'test_{k}', float('nan')):>7.{TASK_METRICS[k][2]}f}"
                       for k in tasks)  # fmt: skip
        lines.append(row)
    epochs = results["config"]["epochs"]
    notes = []
    if finetune:
        extra = results["config"]["finetune_epochs"]
        origin = (
            "the --init-params model"
            if results["config"].get("init_params")
            else f"the float32 model after {epochs} epoch(s)"
        )
        notes.append(
            f"before: {origin}, evaluated under the multiplier; "
            f"after: fine-tuned under it for {extra} more; float32 is fine-tuned as long, so "
            "'vs f32' compares models trained equally long"
        )
    elif mode == "inference" and results["config"].get("init_params"):
        notes.append("every model is the --init-params one, evaluated as named")
    elif mode == "inference":
        notes.append(f"every model is the float32 one after {epochs} epoch(s), evaluated as named")
    if "bleu" in tasks:
        decoding = "greedy" if results["config"].get("beam", 1) == 1 else "beam search"
        notes.append(
            f"test acc is per target token (teacher-forced); BLEU (sacrebleu) of the test set "
            f"decoded by {decoding}"
        )
    if "map" in tasks:
        notes.append(
            "test acc is the class accuracy at the cells holding a box; mAP@.5 and "
            "mAP@[.5:.95] by pycocotools' COCOeval after non-maximum suppression"
        )
    if results.get("data", {}).get("synthetic"):
        notes.append(f"data: {results['data'].get('name', 'the default')}, SYNTHETIC (generated)")
    notes.append(
        "* ms per training step of the whole group: the float32 model alone, or all "
        "multipliers of one vmapped stack together (each member shows its group's time)"
    )
    return "\n".join(lines + notes)


def write_outputs(results: dict[str, Any], out: Path, costs: list[str] | None = None) -> list[Path]:
    """results.json, results.csv, curves.png and ``pareto_<cost>.png`` (accuracy
    against each cost figure in ``costs``, by default every one that some
    run's multiplier carries) in ``out``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    written = [write_text_atomically(out / "results.json", json.dumps(results, indent=2))]
    buf = io.StringIO()
    w = csv.writer(buf)
    c = results["config"]
    w.writerow(
        ["multiplier", "group", "test_accuracy", "before_accuracy", "accuracy_change",
         "test_loss", "step_seconds", "model", "dataset", "mode", "epochs", "seed",
         *(f"test_{k}" for k in TASK_METRICS), "synthetic_data"]
    )  # fmt: skip
    base = results["runs"].get("float32", {}).get("test_accuracy")
    for name, r in results["runs"].items():
        w.writerow(
            [name, r.get("group"), r["test_accuracy"], r.get("before_accuracy"),
             None if base is None else r["test_accuracy"] - base, r["test_loss"],
             r.get("step_seconds"), c["model"], c["dataset"], c["mode"], c["epochs"], c["seed"],
             *(r.get(f"test_{k}") for k in TASK_METRICS),
             bool(results.get("data", {}).get("synthetic"))]
        )  # fmt: skip
    written.append(write_text_atomically(out / "results.csv", buf.getvalue()))
    written.append(plot_curves(results, out / "curves.png"))
    for key in cost_keys(results) if costs is None else costs:
        written.append(plot_pareto(results, key, out / f"pareto_{key}.png"))
    return written


def cost_keys(results: dict[str, Any]) -> list[str]:
    """The cost figures (``power_mW``, ...) that some run's multiplier carries."""
    keys = [k for m in results.get("multipliers", []) for k in (m.get("cost") or {})]
    return list(dict.fromkeys(keys))


def costed_runs(results: dict[str, Any], key: str) -> list[tuple[str, float, float]]:
    """``(run name, cost figure, test accuracy)`` of every run whose multiplier
    carries the cost figure ``key``.

    Raises:
      ValueError: no run carries it (the message lists those that some do).
    """
    points = []
    for m in results.get("multipliers", []):
        cost = (m.get("cost") or {}).get(key)
        run = results["runs"].get(m["name"])
        if cost is not None and run is not None:
            points.append((m["name"], float(cost), float(run["test_accuracy"])))
    if not points:
        have = cost_keys(results)
        raise ValueError(
            f"no run's multiplier has the cost figure {key!r}; "
            + (f"these have: {', '.join(have)}" if have else "none carries a cost (give them "
               "with a C model's PDK45_PWR-style header or +power_mW=X)")
        )  # fmt: skip
    return points


def pareto_front(points: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The points no other point beats (cost no higher and accuracy no lower,
    one of them strictly), by increasing cost."""
    front = []
    for p in sorted(points, key=lambda p: (p[1], -p[2])):
        if not front or p[2] > front[-1][2]:
            front.append(p)
    return front


def plot_pareto(results: dict[str, Any], key: str, path: Path) -> Path:
    """Test accuracy against the cost figure ``key``, one point per run that
    carries it, the Pareto front joined and marked; float32 as a line."""
    from approxjax._src.tools.characterize import pyplot

    plt = pyplot()
    points = costed_runs(results, key)
    front = pareto_front(points)
    c = results["config"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    on_front = {p[0] for p in front}
    for name, cost, acc in points:
        ax.scatter(cost, acc, color="C3" if name in on_front else "C0", zorder=3)
        ax.annotate(name, (cost, acc), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.step([p[1] for p in front], [p[2] for p in front], where="post", color="C3",
            label="Pareto front (no run is cheaper and more accurate)")  # fmt: skip
    base = results["runs"].get("float32", {}).get("test_accuracy")
    if base is not None:
        ax.axhline(base, color="k", ls="--", lw=1, label="float32")
    ax.set_xlabel(key.replace("_", " (", 1) + ")" if "_" in key else key)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{c['model']} on {c['dataset']} ({c['mode']}): accuracy against {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_curves(results: dict[str, Any], path: Path) -> Path:
    """Test accuracy and loss (and BLEU, for translation) per epoch, one line
    per run (float32 in black); bars where every run has a single evaluation."""
    from matplotlib.ticker import MaxNLocator

    from approxjax._src.tools.characterize import pyplot

    plt = pyplot()
    runs = results["runs"]
    c = results["config"]
    panels = [("accuracy_curve", "test accuracy"), ("loss_curve", "test loss (cross-entropy)")]
    for key, (_, label, _) in TASK_METRICS.items():
        if all(f"{key}_curve" in r for r in runs.values()):
            panels.append((f"{key}_curve", f"test {label}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    title = f"{c['model']} on {c['dataset']} ({c['mode']})"
    if results.get("data", {}).get("synthetic"):
        title += ", synthetic data"
    single = all(len(r["accuracy_curve"]) == 1 for r in runs.values())
    names = list(runs)
    for ax, (key, label) in zip(axes, panels, strict=True):
        if single:
            colors = ["k" if n == "float32" else f"C{i % 10}" for i, n in enumerate(names)]
            values = [runs[n][key][0] for n in names]
            ax.bar(range(len(names)), values, color=colors)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            lo, hi = min(values), max(values)
            pad = max(0.1 * (hi - lo), 1e-3)
            ax.set_ylim(0.0 if key == "loss_curve" else max(0.0, lo - pad), hi + pad)
        else:
            for name, r in runs.items():
                style = {"color": "k", "lw": 2} if name == "float32" else {}
                ax.plot(r["epochs"], r[key], marker="o", label=name, **style)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if single:
        epoch = runs[names[0]]["epochs"][0]
        axes[0].set_title(f"{title}: test accuracy, epoch {epoch}")
        axes[1].set_title("test loss (one evaluation per model)")
    else:
        axes[0].set_title(f"{title}: test accuracy")
        axes[1].set_title("test loss")
        axes[0].legend(fontsize=8)
    for ax, (_, label) in zip(axes[2:], panels[2:], strict=True):
        ax.set_title(f"test {label}")
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    """Writes the figure as a PNG atomically and closes it."""
    from approxjax._src.atomic import write_atomically

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    return write_atomically(path, lambda f: f.write(buf.getvalue()))
