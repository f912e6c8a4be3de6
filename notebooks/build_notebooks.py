"""Writes the example notebooks and executes them (outputs are committed).

    python notebooks/build_notebooks.py            # full size, writes *.ipynb with outputs
    APPROXJAX_NOTEBOOK_SMALL=1 pytest tests/test_notebooks.py   # what the tests run

Each notebook reads ``APPROXJAX_NOTEBOOK_SMALL`` to shrink its work.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

SETUP = """import os
SMALL = bool(os.environ.get("APPROXJAX_NOTEBOOK_SMALL"))
import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn
import approxjax as ax
from approxjax.training import make_eval_step, make_train_step"""

NOTEBOOKS = {
    "01_quickstart": [
        ("md", "# Quickstart: replace `nn.Dense` by `approxjax.Dense`\n\nA small classifier on "
               "the bundled 8x8 digits; its Dense layers multiply through Mitchell's logarithmic "
               "multiplier (m = 7), forward and backward. The multiplier is an *argument* of the "
               "jitted steps (made current inside them with `ax.using`), so one compiled step "
               "serves every multiplier."),
        ("code", SETUP),
        ("code", """from approxjax import datasets
data = datasets.load("digits")

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(ax.Dense(64)(x))        # was nn.Dense(64)
        return ax.Dense(10)(x)              # was nn.Dense(10)

model = MLP()
params = model.init(jax.random.key(0), data.x_train[:1])
opt = optax.adam(3e-3)
opt_state = opt.init(params)
train_step = jax.jit(make_train_step(model.apply, opt))   # step(params, opt_state, x, y, multiplier)
evaluate = jax.jit(make_eval_step(model.apply))           # evaluate(params, x, y, multiplier)"""),
        ("code", """mult = ax.mitchell(7)
for epoch in range(1 if SMALL else 5):
    for i in range(0, len(data.x_train) - 63, 64):
        params, opt_state, loss, _ = train_step(params, opt_state, data.x_train[i:i+64],
                                                data.y_train[i:i+64], mult)
    test_loss, metrics = evaluate(params, data.x_test, data.y_test, mult)
    print(f"epoch {epoch + 1}: train loss {float(loss):.3f}, "
          f"test accuracy {float(metrics['accuracy']):.3f}")
_, exact = evaluate(params, data.x_test, data.y_test, None)
print(f"the same weights with exact products: test accuracy {float(exact['accuracy']):.3f}")"""),
    ],
    "02_multiplier_sweep": [
        ("md", "# A multiplier sweep with `vmap` over lookup tables\n\nOne jitted program trains "
               "one model per multiplier; every GEMM is one kernel call for all of them."),
        ("code", SETUP),
        ("code", """from approxjax.runner import SweepConfig, format_results, run_sweep
cfg = SweepConfig(model="cnn", dataset="digits", epochs=1 if SMALL else 4,
                  multipliers=["truncated4", "mitchell4", "mbm4", "drum4", "alm_soa4"],
                  out_dir="", train_limit=256 if SMALL else None)
results = run_sweep(cfg, log=lambda msg: None, show_progress=False)
print(format_results(results))"""),
        ("code", """import matplotlib.pyplot as plt
names = list(results["runs"])
accs = [results["runs"][n]["test_accuracy"] for n in names]
fig, ax0 = plt.subplots(figsize=(7, 3))
ax0.bar(names, accs, color=["k"] + ["tab:blue"] * (len(names) - 1))
ax0.set_ylim(min(accs) - 0.05, 1)
ax0.set_ylabel("test accuracy")
ax0.tick_params(axis="x", rotation=30)
ax0.set_title("8x8 digits, m = 4")
fig.tight_layout()"""),
    ],
    "03_bring_your_own_multiplier": [
        ("md", "# Bring your own multiplier from C\n\nA C functional model becomes a lookup "
               "table (compiled with the system compiler and run in a child process, checked to "
               "depend on the mantissas alone), is characterized, then trained with."),
        ("code", SETUP),
        ("code", '''source = r"""
#include <math.h>
/* truncate both significands to 4 fraction bits, multiply, then drop the
   product's lowest bits: a made-up narrow multiplier */
float my_mul(float a, float b) {
  int ea, eb;
  float fa = frexpf(fabsf(a), &ea) * 2.0f, fb = frexpf(fabsf(b), &eb) * 2.0f;
  fa = floorf(fa * 16.0f) / 16.0f;  fb = floorf(fb * 16.0f) / 16.0f;
  float p = floorf(fa * fb * 32.0f) / 32.0f;
  float r = ldexpf(p, ea + eb - 2);
  return (a < 0) != (b < 0) ? -r : r;
}
"""
mult = ax.from_c(source, "my_mul", 4)
print(ax.characterize(mult))
fig = ax.plot_errors(mult)'''),
        ("code", """from approxjax.runner import SweepConfig, format_results, run_sweep
ax.save_lut(mult, "my_mul4.npz")
cfg = SweepConfig(model="mlp", multipliers=["my_mul4.npz", "truncated4"],
                  epochs=1 if SMALL else 3, out_dir="", train_limit=256 if SMALL else None)
print(format_results(run_sweep(cfg, log=lambda m: None, show_progress=False)))"""),
    ],
    "04_transformer_attention": [
        ("md", "# A transformer with approximate attention\n\nA character-level language model "
               "on a text that ships with Python; the projections *and* the query-key and "
               "attention-value products go through the multiplier. Trained under float32 and "
               "under MBM (m = 7), then evaluated on held-out text."),
        ("code", SETUP),
        ("code", """from approxjax import datasets, networks
data = datasets.load_text(context=32)
model = networks.CharTransformer(vocab=data.num_classes, dim=32, heads=2, layers=1)
params = model.init(jax.random.key(0), data.x_train[:1])
report = []
ax.approximate(model.apply, ax.mbm(7), report=report)(params, data.x_train[:2])
for r in report:
    print(f"{r.index:2d} {r.kind:22s} {r.path}")"""),
        ("code", """opt = optax.adam(3e-3)
step = jax.jit(make_train_step(model.apply, opt))
evaluate = jax.jit(make_eval_step(model.apply))
held_out = slice(0, 256 if SMALL else 2048)

for mult in (None, ax.mbm(7)):
    p, o = params, opt.init(params)
    for i in range(20 if SMALL else 300):
        b = (i * 32) % (len(data.x_train) - 32)
        p, o, loss, _ = step(p, o, data.x_train[b:b+32], data.y_train[b:b+32], mult)
    test_loss, metrics = evaluate(p, data.x_test[held_out], data.y_test[held_out], mult)
    name = "float32" if mult is None else mult.name
    print(f"{name}: training loss {float(loss):.3f}, held-out loss {float(test_loss):.3f}, "
          f"next-character accuracy {float(metrics['accuracy']):.3f}")"""),
    ],
    "05_fp8_training": [
        ("md", "# FP8 training and reduced-precision accumulation\n\nThe arithmetic of a GEMM is "
               "an `ax.Arithmetic`: operand formats, multiplier, product rounding, accumulator "
               "format and adder. Here one MLP on the bundled 8x8 digits trains under the OCP "
               "FP8 recipe (E4M3 activations and weights, E5M2 gradients), then with its sums "
               "kept in bfloat16 or float16 (rounded after every addition, as an adder of that "
               "format does), with stochastic rounding of the sums, and with Mitchell's "
               "multiplier on top, and harsher settings (truncated or 2-bit sums, FP4 operands). "
               "No per-tensor scaling is simulated: that is the training "
               "recipe's part, and Adam makes a constant loss scale free (one config shows it)."),
        ("code", SETUP),
        ("code", """from approxjax import datasets
data = datasets.load("digits")

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(ax.Dense(128)(x))
        x = nn.relu(ax.Dense(64)(x))
        return ax.Dense(10)(x)

def fp8(acc=None, rounding="nearest_even", multiplier=None, key=None):
    # E4M3 forward, E5M2 gradients: g is the lhs of the input gradient g @ W.T
    # and the rhs of the weight gradient x.T @ g; sums in `acc`.
    same = dict(accumulator=acc, accumulator_rounding=rounding, multiplier=multiplier, key=key)
    return (ax.Arithmetic(lhs="e4m3", rhs="e4m3", **same),
            ax.Arithmetic(lhs="e5m2", rhs="e4m3", **same),
            ax.Arithmetic(lhs="e4m3", rhs="e5m2", **same))

def policy(gemms):  # the steps' argument: None, or (forward, input grad, weight grad)
    return None if gemms is None else ax.Policy(gemms[0], input_grad=gemms[1],
                                                weight_grad=gemms[2])

def scaled(scale):  # a constant loss scale (with Adam, the updates hardly change)
    def loss(logits, y):
        value, metrics = ax.training.classification_loss(logits, y)
        return value * scale, metrics
    return loss

key = jax.random.key(1)
CONFIGS = {
    "float32": (None, 1.0),
    "bfloat16 operands": ((ax.Arithmetic(lhs="bfloat16", rhs="bfloat16"),) * 3, 1.0),
    "FP8 (E4M3 fwd, E5M2 grads)": (fp8(), 1.0),
    "FP8, loss scale 2^10": (fp8(), 1024.0),
    "FP8, bfloat16 sums": (fp8("bfloat16"), 1024.0),
    "FP8, float16 sums": (fp8("float16"), 1024.0),
    "FP8, bfloat16 sums, stochastic": (fp8("bfloat16", "stochastic", key=key), 1024.0),
    "FP8, bfloat16 sums, toward zero": (fp8("bfloat16", "toward_zero"), 1024.0),
    "FP8, E5M2 sums": (fp8("e5m2"), 1024.0),
    "FP8 + mitchell2, bfloat16 sums": (fp8("bfloat16", multiplier=ax.mitchell(2)), 1024.0),
    "FP4 (E2M1) operands": ((ax.Arithmetic(lhs="e2m1", rhs="e2m1"),) * 3, 1.0),
}"""),
        ("code", """import time
model = MLP()
params0 = model.init(jax.random.key(0), data.x_train[:1])
opt = optax.adam(3e-3)
evaluate = jax.jit(make_eval_step(model.apply, policy=policy))
epochs, bs = (2, 64) if SMALL else (12, 32)

def fresh(gemms, step):  # new stochastic-rounding noise every step
    if gemms is None or gemms[0].key is None:
        return gemms
    return tuple(a.replace(key=jax.random.fold_in(a.key, step)) for a in gemms)

curves = {}
for name, (gemms, scale) in CONFIGS.items():
    step = jax.jit(make_train_step(model.apply, opt, policy=policy, loss=scaled(scale)))
    params, opt_state, accs, t0 = params0, opt.init(params0), [], time.perf_counter()
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(data.x_train))
        for i in range(0, len(order) - bs + 1, bs):
            idx = order[i:i + bs]
            params, opt_state, loss, _ = step(params, opt_state, data.x_train[idx],
                                              data.y_train[idx], fresh(gemms, epoch * 1000 + i))
        accs.append(float(evaluate(params, data.x_test, data.y_test, gemms)[1]["accuracy"]))
    curves[name] = accs
    print(f"{name:32s} test accuracy {accs[-1]:.4f}  ({time.perf_counter() - t0:.0f} s)")"""),
        ("code", """import matplotlib.pyplot as plt
base = curves["float32"][-1]
print(f"{'configuration':32s} {'final':>7s} {'best':>7s} {'vs float32':>11s}")
for name, accs in curves.items():
    print(f"{name:32s} {accs[-1]:7.4f} {max(accs):7.4f} {accs[-1] - base:+11.4f}")
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=(3, 2))
colors = plt.cm.tab20(np.linspace(0, 1, len(curves)))
for color, (name, accs) in zip(colors, curves.items()):
    ax0.plot(range(1, len(accs) + 1), accs, marker="o", ms=3, label=name,
             color="k" if name == "float32" else color, lw=2 if name == "float32" else 1)
ax0.set_ylim(0.8, 1.0)
ax0.set_xlabel("epoch")
ax0.set_ylabel("test accuracy (curves below 0.8 leave the plot)")
ax0.legend(fontsize=7, loc="lower right")
finals = [accs[-1] for accs in curves.values()]
ax1.barh(list(curves), finals, color=["k", *colors[1:]])
ax1.invert_yaxis()
ax1.set_xlabel("final test accuracy")
ax1.tick_params(axis="y", labelsize=7)
fig.suptitle("MLP on 8x8 digits: number formats and accumulators")
fig.tight_layout()"""),
        ("md", "Reading the table: the FP8 recipe and 8-bit-mantissa sums train this small model "
               "as float32 does; sums of 2 mantissa bits (E5M2) cost accuracy, because small "
               "products vanish against a large running sum (swamping). FP4 E2M1 without the MX "
               "block scales cannot represent weights below 0.25 (its smallest nonzero value "
               "is 0.5): they round to zero and the model does not learn. Scaling (per tensor "
               "or per block) belongs to the training recipe: apply it around the GEMM."),
    ],
    "06_integer_multipliers": [
        ("md", "# Integer multipliers on an int8-quantized CNN\n\nMost published approximate "
               "multipliers are integer circuits. Here: an 8-bit C model of your own (with the "
               "power figure its header states), the catalog's designs, their error metrics, "
               "and one vmapped program training a quantized CNN under all of them at once, "
               "with straight-through gradients and with the gradient of the table itself."),
        ("code", SETUP),
        ("code", """# A C functional model as EvoApproxLib ships them; the power figure in its header
# is illustrative here (not a measured circuit), and becomes mult.cost.
source = r'''
// PDK45_PWR = 0.301 mW
#include <stdint.h>
int16_t mul8s_drop6(int8_t a, int8_t b) {  /* the six lowest product bits dropped */
    int p = (int)a * (int)b;
    return (int16_t)(p < 0 ? -((-p) & ~63) : (p & ~63));
}
'''
mine = ax.from_c(source, "mul8s_drop6", bits=8, signed=True)
print(mine, mine.cost)
designs = [ax.integer.exact(8), mine, ax.integer.mitchell(8), ax.integer.kulkarni(8, signed=True),
           ax.integer.drum(8, 4), ax.integer.drum(8, 2)]
print(f"{'multiplier':14s} {'MAE%':>8s} {'WCE%':>8s} {'EP%':>7s} {'MRE%':>7s}")
stats = {}
for m in designs:
    c = ax.characterize(m)
    stats[m.name] = c
    print(f"{m.name:14s} {c.mae_percent:8.4f} {c.wce_percent:8.4f} {c.ep:7.2f} {c.mre:7.3f}")
fig = ax.plot_errors(designs[1:3])"""),
        ("code", """from approxjax import datasets
data = datasets.load("digits")

class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(ax.Conv(16, (3, 3))(x))
        x = nn.relu(ax.Conv(32, (3, 3), strides=2)(x))
        return ax.Dense(10)(x.reshape(x.shape[0], -1))

model = CNN()
params0 = model.init(jax.random.key(0), data.x_train[:1])
opt = optax.adam(3e-3)
stack = ax.stack(designs)                 # six tables, one program
epochs, bs = (1, 64) if SMALL else (8, 64)

def train(gradient):
    quantized = lambda m: ax.Quantized(m, gradient=gradient)   # int8 codes, this gradient
    step = jax.jit(jax.vmap(make_train_step(model.apply, opt, policy=quantized),
                            in_axes=(0, 0, None, None, 0)))
    evaluate = jax.jit(jax.vmap(make_eval_step(model.apply, policy=quantized),
                                in_axes=(0, None, None, 0)))
    params = jax.tree_util.tree_map(lambda a: jnp.stack([a] * len(designs)), params0)
    state = jax.vmap(opt.init)(params)
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(len(data.x_train))
        for i in range(0, len(order) - bs + 1, bs):
            idx = order[i:i + bs]
            params, state, loss, _ = step(params, state, data.x_train[idx], data.y_train[idx], stack)
    return np.asarray(evaluate(params, data.x_test, data.y_test, stack)[1]["accuracy"])

accuracy = {g: train(g) for g in ("ste", "lut")}
print(f"{'multiplier':14s} {'ste':>7s} {'lut':>7s}")
for i, m in enumerate(designs):
    print(f"{m.name:14s} {accuracy['ste'][i]:7.4f} {accuracy['lut'][i]:7.4f}")"""),
        ("code", """import matplotlib.pyplot as plt
from approxjax._src.runner.outputs import pareto_front
fig, ax0 = plt.subplots(figsize=(7, 4.5))
for g, color in (("ste", "C0"), ("lut", "C1")):
    points = [(m.name, stats[m.name].mae_percent, float(a)) for m, a in zip(designs, accuracy[g])]
    for name, x, y in points:
        ax0.scatter(x, y, color=color)
        ax0.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = pareto_front(points)  # no design has fewer errors and more accuracy
    ax0.step([p[1] for p in front], [p[2] for p in front], where="post", color=color,
             label=f"{g} gradients: Pareto front")
ax0.set_xlabel("mean absolute error (% of the largest product)")
ax0.set_ylabel("test accuracy")
ax0.legend()
fig.tight_layout()"""),
        ("md", "`approxjax sweep --quantize int8 --multipliers mitchell,file.c@mul8s_drop6:s8` "
               "runs the same experiment from the command line, and plots accuracy against "
               "every cost figure the multipliers carry (`pareto_power_mW.png`)."),
    ],
}


def build(name: str, cells, execute: bool = True, timeout: int = 600) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, text in cells:
        nb.cells.append(
            nbformat.v4.new_markdown_cell(text) if kind == "md" else nbformat.v4.new_code_cell(text)
        )
    if execute:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE)}}).execute()
    return nb


def main(argv=None) -> int:
    names = (argv or sys.argv[1:]) or list(NOTEBOOKS)
    for name in names:
        nb = build(name, NOTEBOOKS[name])
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"wrote {name}.ipynb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
