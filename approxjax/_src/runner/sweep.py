"""The experiment runner behind ``approxjax sweep``: float32 against many multipliers.

It trains (or evaluates, or fine-tunes) a float32 baseline and every multiplier
on one dataset; multipliers with the same m train together as one vmapped
program. Every setting is checked before anything is trained. Each run writes
``run.json`` (what it computes), ``results.json`` (configuration, versions,
data identity, curves, final metrics), ``results.csv`` and ``curves.png``,
with orbax checkpoints after every epoch so that a run resumes (only into
the same run: see :mod:`approxjax._src.runner.checkpoints`).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from approxjax._src.arithmetic.arithmetic import Arithmetic, stack
from approxjax._src.arithmetic.multipliers import Multiplier
from approxjax._src.arithmetic.quantization import Quantized
from approxjax._src.interpret.policy import Policy, using
from approxjax._src.runner import checkpoints, datasets, networks, outputs
from approxjax._src.runner.config import (
    GEMMS,
    ConfigError,
    SweepConfig,
    fingerprint_fields,
    validate,
)
from approxjax._src.runner.mesh import Placement, parse_mesh
from approxjax._src.runner.params import fingerprint as params_fingerprint
from approxjax._src.runner.params import load_params
from approxjax._src.runner.specs import describe, load_arithmetic, parse_quantize
from approxjax._src.runner.steps import (
    classification_loss,
    make_eval_step,
    make_train_step,
    under,
)
from approxjax._src.runner.tasks import Task, task_for

Arith = Multiplier | Arithmetic | Quantized


def make_policy(cfg: SweepConfig, mult: Arith | None) -> Policy | None:
    """The policy a sweep trains a multiplier or arithmetic (or a stack)
    under (a quantized GEMM chooses its own gradients)."""
    if mult is None:
        return None
    integer = isinstance(mult, Quantized)
    return Policy(
        mult,
        rules=[(p, None) for p in cfg.exact_layers],
        first_exact=cfg.first_exact,
        last_exact=cfg.last_exact,
        input_grad="forward" if integer or "input_grad" in cfg.approximate else None,
        weight_grad="forward" if integer or "weight_grad" in cfg.approximate else None,
    )


class Trainer:
    """The model, data, optimizer and compiled steps of one sweep."""

    def __init__(self, cfg: SweepConfig, model, data, placement: Placement, show: bool):
        self.cfg, self.model, self.data, self.placement = cfg, model, data, placement
        self.show = show
        self.optimizer = optax.adam(cfg.learning_rate)
        # First/last-layer rules need the whole model: through approximate().
        route = "approximate" if cfg.first_exact or cfg.last_exact else "using"
        policy = lambda mult: make_policy(cfg, mult)  # noqa: E731
        self.task: Task | None = task_for(data, model, cfg, under(route, policy))
        loss = self.task.loss if self.task else classification_loss
        self._step = make_train_step(
            model.apply, self.optimizer, loss=loss, policy=policy, route=route
        )
        self._eval = make_eval_step(model.apply, loss=loss, policy=policy, route=route)
        self._predictors: dict[bool, Callable] = {}
        self.n_train = (
            data.train_size if cfg.train_limit is None else min(cfg.train_limit, data.train_size)
        )

    def compiled(self, stacked: bool):
        step, ev = self._step, self._eval
        if stacked:
            step = jax.vmap(step, in_axes=(0, 0, None, None, 0))
            ev = jax.vmap(ev, in_axes=(0, None, None, 0))
        return jax.jit(step), jax.jit(ev)

    def check_policy(self, mult: Arith) -> None:
        """Traces the loss once under ``mult`` (no computation): a rule that
        matches no layer raises here, before anything is trained."""
        x, y = self.data.sample(2)
        params = jax.eval_shape(self.model.init, jax.random.key(0), x)
        params = jax.eval_shape(lambda p: self.with_scales(p, mult), params)
        jax.eval_shape(self._eval, params, x, y, mult)

    def with_scales(self, params, mult: Arith | None):
        """``params`` plus the learned scales and zero points
        (``+calib=learned``, ``+asym``) that the layers create under ``mult``
        (a group's first member: they start from the data's range by the
        spec's ``init=``, the same for every member), set from the first
        training batch; ``params`` itself for other arithmetics."""
        if not getattr(mult, "learns_scales", False):
            return params
        x, _ = self.data.sample(self.cfg.batch_size)
        key = jax.random.key(self.cfg.seed)
        with using(make_policy(self.cfg, mult)):
            _, grown = self.model.apply(params, x, mutable=["params"], rngs={"params": key})
        return grown

    def evaluate(self, ev, params, mult, label: str) -> dict[str, np.ndarray]:
        """Test loss and accuracy (and a task's metrics: BLEU, mAP), one
        value per member of a stack: batches weighed by their examples (or
        by the ``count`` a loss reports: target tokens)."""
        bs = max(self.cfg.batch_size, 256)
        losses, accs, weights = [], [], []
        count = -(-self.data.test_size // bs)
        bar = tqdm(self.data.test_batches(bs), desc=f"{label}: test", leave=False, total=count,
                   disable=not self.show, file=sys.stderr, unit="batch")  # fmt: skip
        for x, y in bar:
            loss, metrics = ev(params, self.placement.batch(x), self.placement.batch(y), mult)
            losses.append(np.asarray(loss))
            accs.append(np.asarray(metrics["accuracy"]))
            weights.append(np.asarray(metrics.get("count", len(x)), np.float64))
        losses, accs, w = np.stack(losses), np.stack(accs), np.stack(weights)
        w = w.reshape(w.shape + (1,) * (losses.ndim - w.ndim))  # a stack's members
        w = w / w.sum(axis=0)
        scores = {"loss": np.sum(w * losses, axis=0), "accuracy": np.sum(w * accs, axis=0)}
        if self.task is not None:
            scores |= self.task_scores(params, mult, label)
        return scores

    def task_scores(self, params, mult, label: str) -> dict[str, np.ndarray]:
        """The task's own test metrics (BLEU, mAP), one value per stack
        member, from its predictions on the test set in batches."""
        task = self.task
        stacked = mult is not None and bool(mult.batch_shape)
        if stacked not in self._predictors:
            fn = jax.vmap(task.predict, in_axes=(0, None, 0)) if stacked else task.predict
            self._predictors[stacked] = jax.jit(fn)
        predict = self._predictors[stacked]
        inputs = task.inputs(self.data)
        bs = max(self.cfg.batch_size, 256)
        outs = []
        for i in tqdm(range(0, len(inputs), bs), desc=f"{label}: {task.verb}", leave=False,
                      disable=not self.show, file=sys.stderr, unit="batch"):  # fmt: skip
            out = np.asarray(predict(params, self.placement.batch(inputs[i : i + bs]), mult))
            outs.append(out if stacked else out[None])
        members = np.concatenate(outs, axis=1)
        scores = [task.score(self.data, m) for m in members]
        return {key: np.array([s[key] for s in scores]) for key in scores[0]}


def train_group(
    trainer: Trainer,
    label: str,
    mult: Arith | None,
    params0,
    epochs: int,
    ckpt: checkpoints.GroupCheckpoint | None,
    log: Callable[[str], None],
    first_epoch: int = 0,
) -> tuple[Any, dict]:
    """Trains one group (float32, one arithmetic without a table, or a stack of
    multipliers or arithmetics that share m and formats) for ``epochs`` epochs
    numbered from ``first_epoch + 1``; resumes from ``ckpt`` when asked."""
    cfg, data, place = trainer.cfg, trainer.data, trainer.placement
    stacked = mult is not None and bool(mult.batch_shape)
    s = len(mult) if stacked else 1
    step, ev = trainer.compiled(stacked)
    params = jax.tree_util.tree_map(lambda a: jnp.stack([a] * s), params0) if stacked else params0
    opt = trainer.optimizer
    opt_state = jax.vmap(opt.init)(params) if stacked else opt.init(params)
    axis = place.sweep_axis(s if stacked else None)
    if stacked and place.sizes["sweep"] > 1 and axis is None:
        log(f"{label}: {s} multipliers do not split over sweep={place.sizes['sweep']}; "
            "replicating the stack")  # fmt: skip
    params, opt_state = place.state(params, axis), place.state(opt_state, axis)
    if stacked:
        mult = place.state(mult, axis)
    history: dict[str, list] = {"epoch": [], "step_seconds": []}
    start = 0
    if cfg.resume and ckpt is not None:
        restored = ckpt.restore({"params": params, "opt_state": opt_state})
        if restored is not None:
            start, state, history = restored
            params, opt_state = state["params"], state["opt_state"]
            log(f"{label}: resumed after epoch {first_epoch + start} (checkpoint {ckpt.folder})")
    n = trainer.n_train
    bs = cfg.batch_size
    steps = max(n // bs, 1)
    for epoch in range(start, epochs):
        number = first_epoch + epoch + 1
        times = []
        batches = data.train_batches(cfg.seed + number - 1, bs, n)
        bar = tqdm(batches, desc=f"{label}: epoch {number}", leave=False, unit="step",
                   total=steps, disable=not trainer.show, file=sys.stderr)  # fmt: skip
        for i, (x, y) in enumerate(bar):
            t = time.perf_counter()
            params, opt_state, loss, _ = step(
                params, opt_state, place.batch(x), place.batch(y),
                _fresh_noise(mult, stacked, number * steps + i),
            )  # fmt: skip
            jax.block_until_ready(loss)
            if epoch > start or i > 0:  # the first step of a process compiles
                times.append(time.perf_counter() - t)
            if i % 8 == 0 or i == steps - 1:
                bar.set_postfix(loss=f"{float(np.asarray(loss).mean()):.4f}")
        scores = trainer.evaluate(ev, params, mult, label)
        history["epoch"].append(number)
        history["step_seconds"].append(float(np.median(times)) if times else None)
        for key, value in scores.items():
            history.setdefault(key, []).append(np.atleast_1d(value).tolist())
        log(f"{label}: epoch {number} test {_scores_text(scores)}"
            + (f" ({1e3 * np.median(times):.1f} ms/step)" if times else ""))  # fmt: skip
        if ckpt is not None:
            ckpt.save(epoch + 1, {"params": params, "opt_state": opt_state}, history)
    return params, history


def _fresh_noise(mult: Arith | None, stacked: bool, step: int) -> Arith | None:
    """``mult`` with its stochastic-rounding key folded with the step number
    (fresh noise every step, reproducible), or ``mult`` itself."""
    if not isinstance(mult, Arithmetic) or mult.key is None:
        return mult
    fold = jax.vmap(jax.random.fold_in, (0, None)) if stacked else jax.random.fold_in
    return Arithmetic._from(mult.multiplier, fold(mult.key, step), mult.spec)


def _specs(cfg: SweepConfig) -> list[tuple[str, str]]:
    """The sweep's arithmetic specs with the flag that named each: the
    multipliers, then one ``exact+FORMAT`` per format (float32 itself is the
    baseline, not repeated)."""
    from approxjax._src.arithmetic.formats import get

    formats = [f.strip() for f in cfg.formats]
    specs = [("--multipliers", s.strip()) for s in cfg.multipliers]
    if cfg.quantize is not None:  # the exact integer baseline, unless named already
        bits, signed = parse_quantize(cfg.quantize)
        exact = f"exact{bits}{'s' if signed else 'u'}"
        if not any(s.split("+")[0].strip() == exact for _, s in specs):
            specs.insert(0, ("--quantize", exact))
    return specs + [("--formats", f"exact+{f}") for f in formats if not get(f).is_float32]


def _load_multipliers(cfg: SweepConfig) -> list[tuple[str, Arith]]:
    loaded, names = [], {}
    quantize = None if cfg.quantize is None else parse_quantize(cfg.quantize)
    for flag, spec in _specs(cfg):
        try:
            mult = load_arithmetic(spec, key_seed=cfg.seed, quantize=quantize)
        except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
            said = str(e) if str(e).startswith(repr(spec)) else f"{spec!r}: {e}"
            raise ConfigError(f"{flag} {said}") from e
        if mult is None:
            raise ConfigError(
                f"--multipliers {spec!r} is float32 itself (the baseline every sweep trains)"
            )
        if mult.name in names:
            raise ConfigError(
                f"--multipliers {names[mult.name]!r} and {spec!r} are the same multiplier "
                f"({mult.name})"
            )
        names[mult.name] = spec
        if isinstance(mult, Quantized) and set(cfg.approximate) != set(GEMMS):
            raise ConfigError(
                f"{flag} {spec!r}: an integer multiplier's gradients are chosen by +grad= "
                f"(ste: exact float32 backward GEMMs), not --approximate "
                f"{','.join(cfg.approximate)}"
            )
        loaded.append((spec, _with_method(mult, cfg, flag, spec)))
    return loaded


def _with_method(mult: Arith, cfg: SweepConfig, flag: str, spec: str) -> Arith:
    """The arithmetic as ``--method`` runs it: its method set (``fast``:
    native, the table replaced by its surrogate where it has no exact factors)."""
    from approxjax._src.arithmetic.arithmetic import as_arithmetic
    from approxjax._src.ops.native import choose
    from approxjax._src.tools.decompose import surrogate

    if cfg.method == "auto":
        return mult
    if isinstance(mult, Quantized):
        if cfg.method == "lut":
            return mult
        raise ConfigError(
            f"{flag} {spec!r}: --method {cfg.method}: integer multipliers run by their tables "
            "(--method auto or lut)"
        )
    arith = as_arithmetic(mult)
    table = arith.multiplier
    method = "native" if cfg.method == "fast" else cfg.method
    if cfg.method == "fast" and table is not None and table.factors is None:
        try:
            table = surrogate(table, cfg.surrogate_rank)
        except ValueError as e:
            raise ConfigError(f"{flag} {spec!r}: --method fast: {e}") from e
    try:
        out = arith.replace(multiplier=table, method=method)
        choose(method, out.spec, table)  # method="native" where it cannot run: now
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{flag} {spec!r}: --method {cfg.method}: {e}") from e
    return out


def _group_label(mult: Arith) -> str:
    """A group's label (and checkpoint folder name): ``m7``, ``m7-e4m3-x-e4m3``,
    ``exact-bfloat16-x-bfloat16``."""
    if isinstance(mult, Multiplier):
        return f"m{mult.mantissa_bits}"
    if isinstance(mult, Quantized):
        (a, b), signed = mult.multiplier.bits, mult.multiplier.signed
        widths = f"int{a}" if a == b else f"int{a}x{b}"
        sign = "".join(dict.fromkeys("s" if x else "u" for x in signed))
        alone = [mult.multiplier.name] if mult.multiplier.function is not None else []
        return "-".join([widths + sign, *mult.settings, *alone])  # function models: alone
    name = mult.name
    head = "exact" if mult.multiplier is None else f"m{mult.multiplier.mantissa_bits}"
    tail = name[name.index("[") + 1 : -1] if "[" in name else ""
    return "-".join([head, *re.findall(r"[A-Za-z0-9_.]+", tail)])


def _groups(loaded: list[tuple[str, Arith]]) -> dict[str, list[Arith]]:
    """Runs that train together: multipliers (or arithmetics) with one m and one
    set of formats stack into one vmapped program; an arithmetic without a
    table runs alone."""
    groups: dict[str, list[Arith]] = {}
    for _, mult in loaded:
        groups.setdefault(_group_label(mult), []).append(mult)
    return groups


def run_sweep(
    cfg: SweepConfig, log: Callable[[str], None] = print, show_progress: bool = True
) -> dict[str, Any]:
    """Runs a sweep (see the module docstring) and returns the results dict.

    Raises:
      ConfigError: a bad setting (before anything is trained), an output folder
        that holds another run, or a resume into a run with other settings.
    """
    validate(cfg)
    sizes = parse_mesh(cfg.mesh, jax.device_count(), cfg.batch_size)
    data = datasets.load(cfg.dataset, cfg.data_dir, cfg.seed, cfg.data_file, cfg.image_size)
    model = networks.build(cfg.model, data.num_classes, cfg.time_steps, data)
    loaded = _load_multipliers(cfg)
    groups = _groups(loaded)
    placement = Placement(sizes)
    show = show_progress and sys.stderr.isatty() if show_progress == "auto" else show_progress
    trainer = Trainer(cfg, model, data, placement, bool(show))
    for members in groups.values():
        if getattr(members[0], "learns_scales", False) and (cfg.first_exact or cfg.last_exact):
            raise ConfigError(
                f"{members[0].name}: learned scales are parameters of the model's layers; "
                "--first-exact/--last-exact run the model through approximate(), which has "
                "none: use --exact-layers, or another calibration"
            )
        trainer.check_policy(members[0])
    params0 = model.init(jax.random.key(cfg.seed), data.sample(2)[0])
    if cfg.init_params is not None:
        params0 = load_params(cfg.init_params, params0)
    # Parameters trained elsewhere are evaluated (inference) or fine-tuned as
    # they are: the float32 baseline is not trained first.
    pretrained = cfg.init_params is not None and cfg.mode != "train"
    base_epochs = 0 if pretrained else cfg.epochs
    identity = {
        "config": fingerprint_fields(cfg),
        "data": checkpoints.data_fingerprint(data),
        "multipliers": {m.name: checkpoints.table_fingerprint(m) for _, m in loaded},
        "arithmetic": {m.name: describe(m) for _, m in loaded},
    }
    if cfg.init_params is not None:
        identity["init_params"] = params_fingerprint(params0)
    out = Path(cfg.out_dir) if cfg.out_dir else None
    if out is not None:
        checkpoints.prepare_output(out, identity, cfg.resume, cfg.on_existing)

    def group_ckpt(label, members):
        if out is None:
            return None
        ident = {"run": identity, "group": label, "members": [m.name for m in members]}
        return checkpoints.GroupCheckpoint((out / "checkpoints" / label).resolve(), ident)

    synthetic = bool(getattr(data, "synthetic", False))
    log(
        f"sweep: {cfg.model} on {data.name}{' (synthetic)' if synthetic else ''} "
        f"({trainer.n_train} of {data.train_size} train, {data.test_size} test), mode "
        f"{cfg.mode}, {len(loaded)} multiplier(s) in {len(groups)} vmapped group(s); "
        f"{placement.describe()}" + (f"; {data.note}" if getattr(data, "note", "") else "")
    )
    results: dict[str, Any] = {
        "schema": outputs.SCHEMA,
        "config": dataclasses.asdict(cfg),
        "multipliers": [
            {"spec": spec, "name": m.name, "group": _group_label(m), **describe(m)}
            for spec, m in loaded
        ],
        "data": {**identity["data"], "synthetic": synthetic},
        "mesh": placement.sizes,
        "versions": outputs.versions(),
        "runs": {},
    }
    if pretrained:
        scores = trainer.evaluate(trainer.compiled(False)[1], params0, None, "float32")
        base_params, base_hist = params0, _single(0, scores)
        log(f"float32: the parameters of --init-params, test {_scores_text(scores)}")
    else:
        base_params, base_hist = train_group(
            trainer, "float32", None, params0, cfg.epochs, group_ckpt("float32", []), log
        )
    if cfg.mode == "finetune":
        _, tuned = train_group(
            trainer, "float32-finetune", None, base_params, cfg.finetune_epochs,
            group_ckpt("float32-finetune", []), log, first_epoch=base_epochs,
        )  # fmt: skip
        results["runs"]["float32"] = outputs.run_summary(
            _joined(base_hist, tuned), 0, "float32", before_accuracy=base_hist["accuracy"][-1][0]
        )
    else:
        results["runs"]["float32"] = outputs.run_summary(base_hist, 0, "float32")
    for label, members in groups.items():
        first = members[0]
        has_table = (
            first.multiplier is not None
            if isinstance(first, Arithmetic)
            else not isinstance(first, Quantized) or first.multiplier.function is None
        )
        mults = stack(members) if has_table else members[0]
        if cfg.mode == "train":
            start = trainer.with_scales(params0, first)
            _, hist = train_group(
                trainer, label, mults, start, cfg.epochs, group_ckpt(label, members), log
            )
            for i, mult in enumerate(members):
                results["runs"][mult.name] = outputs.run_summary(hist, i, label)
            continue
        _, ev = trainer.compiled(has_table)
        count = len(members)
        scaled = trainer.with_scales(base_params, first)
        if has_table:
            ps = jax.tree_util.tree_map(lambda a, c=count: jnp.stack([a] * c), scaled)
            axis = placement.sweep_axis(count)
            ps, placed = placement.state(ps, axis), placement.state(mults, axis)
        else:
            ps, placed = scaled, mults
        scores = trainer.evaluate(ev, ps, placed, label)
        before = _single(base_epochs, scores)
        accs = zip(members, np.atleast_1d(scores["accuracy"]), strict=True)
        log(f"{label}: float32 model under " + ", ".join(f"{x.name} {a:.4f}" for x, a in accs))
        if cfg.mode == "inference":
            for i, mult in enumerate(members):
                results["runs"][mult.name] = outputs.run_summary(before, i, label)
            continue
        _, tuned = train_group(
            trainer, label + "-finetune", mults, scaled, cfg.finetune_epochs,
            group_ckpt(label + "-finetune", members), log, first_epoch=base_epochs,
        )  # fmt: skip
        for i, mult in enumerate(members):
            results["runs"][mult.name] = outputs.run_summary(
                _joined(before, tuned), i, label, before_accuracy=before["accuracy"][0][i]
            )
    if out is not None:
        outputs.write_outputs(results, out)
    return results


def _single(epoch: int, scores: dict[str, np.ndarray]) -> dict:
    """The history of one evaluation (no training) after ``epoch`` epochs."""
    history: dict[str, list] = {"epoch": [epoch], "step_seconds": [None]}
    return history | {key: [np.atleast_1d(v).tolist()] for key, v in scores.items()}


def _scores_text(scores: dict[str, np.ndarray]) -> str:
    """``accuracy 0.9417`` (and ``, BLEU 31.20``), each member's value."""
    text = "accuracy " + ", ".join(f"{a:.4f}" for a in np.atleast_1d(scores["accuracy"]))
    for key, (name, _, digits) in outputs.TASK_METRICS.items():
        if key in scores:
            text += f"; {name} " + ", ".join(f"{v:.{digits}f}" for v in np.atleast_1d(scores[key]))
    return text


def _joined(first: dict, then: dict) -> dict:
    return {key: list(first[key]) + list(then[key]) for key in first}
