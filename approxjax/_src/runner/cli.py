"""The approxjax command line (also ``python -m approxjax``).

Commands: ``sweep`` (the main job), ``report``, ``demo``, ``lut build``, ``lut info``,
``characterize``. Every error is one ``approxjax: error: ...`` line on stderr
and exit status 1 (2 for usage errors, as argparse does).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from approxjax._src.runner.config import INTEGER_OPTIONS, SPEC_HELP


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every default (an option whose help states its own, or
    that has none, shows no "(default: None)")."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _demo(args: argparse.Namespace) -> int:
    from approxjax._src.runner import demo

    demo.run(mantissa_bits=args.mantissa_bits, seed=args.seed)
    return 0


def _lut_build(args: argparse.Namespace) -> int:
    from approxjax._src.tools import c_models, characterize, lut_files

    mult = c_models.from_c(
        args.source,
        args.function,
        args.mantissa_bits,
        name=args.name,
        flags=args.flag or (),
        validate="warn" if args.allow_mismatch else True,
        timeout=args.timeout,
        hint="--allow-mismatch",
    )
    path = lut_files.save_lut(mult, args.output)
    print(f"wrote {path}: {mult.name}, m={mult.mantissa_bits}")
    print(characterize.characterize(mult))
    return 0


def _lut_info(args: argparse.Namespace) -> int:
    from approxjax._src.runner.specs import load_multiplier
    from approxjax._src.tools import characterize

    mult = load_multiplier(args.file)
    for key, value in sorted(mult.metadata.items()):
        print(f"{key:>18}: {value}")
    print(characterize.characterize(mult))
    return 0


def _characterize(args: argparse.Namespace) -> int:
    from approxjax._src.arithmetic.multipliers import Multiplier
    from approxjax._src.runner.specs import load_multiplier
    from approxjax._src.tools import characterize

    mults = [load_multiplier(spec, args.mantissa_bits) for spec in args.multipliers]
    results = [characterize.characterize(m) for m in mults]
    print(characterize.format_table(results))
    from approxjax._src.tools.decompose import decompose

    floats = [m for m in mults if isinstance(m, Multiplier)]
    if floats:
        print("\nrank (exact) and the best rank-r approximation's relative error per entry:")
    for m in floats:
        print(decompose(m))
    if args.plot:
        from pathlib import Path

        plot = Path(args.plot)
        integer = [m for m in mults if not isinstance(m, Multiplier)]
        for kind, group, path in (
            ("float", floats, plot),
            (
                "integer",
                integer,
                plot.with_name(f"{plot.stem}_integer{plot.suffix}") if floats else plot,
            ),
        ):
            if group:
                characterize.plot_errors(group, path)
                print(f"plot: {path} ({kind} multipliers, one row each)")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from approxjax._src.runner import outputs
    from approxjax._src.runner.config import SweepConfig, integer_defaults
    from approxjax._src.runner.specs import parse_quantize
    from approxjax._src.runner.sweep import run_sweep

    cfg = SweepConfig(
        model=args.model,
        time_steps=args.time_steps,
        dataset=args.dataset,
        multipliers=(
            args.multipliers.split(",")
            if args.multipliers is not None
            else []
            if args.formats
            else integer_defaults(parse_quantize(args.quantize)[0])
            if args.quantize
            else list(SweepConfig.multipliers)
        ),
        formats=args.formats.split(",") if args.formats else (),
        quantize=args.quantize,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        mode=args.mode,
        finetune_epochs=args.finetune_epochs,
        approximate=args.approximate.split(","),
        exact_layers=args.exact_layer or (),
        first_exact=args.first_exact,
        last_exact=args.last_exact,
        data_dir=args.data_dir,
        data_file=args.data_file,
        beam=args.beam,
        image_size=args.image_size,
        init_params=args.init_params,
        train_limit=args.train_limit,
        out_dir=args.out,
        resume=args.resume,
        on_existing=args.on_existing,
        mesh=args.mesh,
        method=args.method,
        surrogate_rank=args.surrogate_rank,
    )
    show = {"auto": sys.stderr.isatty(), "on": True, "off": False}[args.progress]
    results = run_sweep(cfg, log=lambda msg: print(msg, flush=True), show_progress=show)
    print(outputs.format_results(results))
    print(
        f"wrote {args.out}/results.json, results.csv, curves.png"
        + "".join(f", pareto_{k}.png" for k in outputs.cost_keys(results))
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from approxjax._src.runner import outputs

    path = Path(args.results)
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read results file {path}: {e}") from e
    outputs.check_results(results, str(path))
    print(outputs.format_results(results))
    costs = None
    if args.cost:
        costs = [key.strip() for key in args.cost.split(",")]
        for key in costs:
            outputs.costed_runs(results, key)  # each must be there: an error before writing
    written = outputs.write_outputs(results, Path(args.out) if args.out else path.parent, costs)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="approxjax",
        description="Simulate approximate multipliers in JAX/Flax networks.",
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help_text):
        return sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=_Formatter
        )

    demo = command("demo", "a small network's outputs and error under a few multipliers vs float32")
    demo.add_argument(
        "--mantissa-bits", "-m", type=int, nargs="+", default=[3, 5, 7],
        help="mantissa bits of the truncated multipliers to compare",
    )  # fmt: skip
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(func=_demo)

    lut = command("lut", "build and inspect lookup-table files")
    lut_sub = lut.add_subparsers(dest="lut_command", metavar="LUT_COMMAND", required=True)
    build = lut_sub.add_parser(
        "build", help="tabulate a C/C++ model into an .npz LUT", formatter_class=_Formatter
    )
    build.add_argument("source", help="C or C++ file with float f(float, float)")
    build.add_argument("--function", required=True, help="the model's function name")
    build.add_argument("-m", "--mantissa-bits", type=int, required=True, help="0 to 12")
    build.add_argument("-o", "--output", required=True, help="output .npz file")
    build.add_argument("--name", help="the multiplier's name (default: function + m)")
    build.add_argument("--flag", action="append", help="extra compiler flag (repeatable)")
    build.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="warn instead of failing when the model depends on more than the mantissas",
    )
    build.add_argument(
        "--timeout", type=float, default=60.0, help="seconds the model may run in all"
    )
    build.set_defaults(func=_lut_build)
    info = lut_sub.add_parser(
        "info", help="metadata and error metrics of a LUT file", formatter_class=_Formatter
    )
    info.add_argument("file", help=".npz (approxjax) or .bin (ApproxTrain) table")
    info.set_defaults(func=_lut_info)

    sweep = command("sweep", "train/evaluate a model under float32 and multipliers")
    sweep.add_argument(
        "--model",
        default="cnn",
        help="mlp, cnn, lenet5, resnet8/20 (CIFAR-style), resnet18/34/50/101 (ImageNet-style), "
        "vit_tiny, transformer, scnn (spiking CNN), translator (encoder-decoder), detector "
        "(YOLO-style)",
    )
    sweep.add_argument(
        "--time-steps", type=int, default=8, help="time steps of a spiking model (scnn)"
    )
    sweep.add_argument(
        "--dataset",
        default="digits",
        help="digits, mnist, fashion_mnist, cifar10, text, pairs (sentence pairs: translator), "
        "imagefolder (one folder per class in --data-dir, streamed with augmentation), coco "
        "(COCO-format detection data in --data-dir, default: synthetic shapes; detector)",
    )
    sweep.add_argument("--data-dir", help="dataset folder (mnist, fashion_mnist, cifar10)")
    sweep.add_argument(
        "--data-file",
        help="text: the text file; pairs: sentence pairs, one per line, source<TAB>target "
        "(or Tatoeba's id<TAB>source<TAB>id<TAB>target); default: a synthetic task",
    )
    sweep.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="the side of the square images the model sees: imagefolder (default 224), coco "
        "(64; its synthetic shapes 32)",
    )
    sweep.add_argument(
        "--beam",
        type=int,
        default=1,
        help="translator: decode the test set for BLEU greedily (1) or by beam search of this "
        "width",
    )
    sweep.add_argument(
        "--init-params",
        help="float32 parameters trained elsewhere: an .npz of the parameter tree's leaves by "
        "path (params/Conv_0/kernel, ...) or an orbax checkpoint folder; --mode inference "
        "evaluates them under each multiplier, finetune fine-tunes them, train starts from them",
    )
    sweep.add_argument(
        "--multipliers",
        help="comma-separated catalog names with m, .npz/.bin LUT files, or file.c@function:m, "
        "each optionally with +options: " + SPEC_HELP + " (default: truncated7,mitchell7,mbm7,"
        "drum7, or none with --formats)",
    )
    sweep.add_argument(
        "--formats",
        help="comma-separated operand formats run with IEEE products and float32 sums, e.g. "
        "fp32,bf16,fp16,e4m3,e5m2 (which format does this model need?)",
    )
    sweep.add_argument(
        "--quantize",
        help="int8, uint8, int4, ... (2-12 bits): quantize the operands of every integer "
        "multiplier's GEMMs to codes of this width, and add the exact integer multiplier as "
        "a baseline; integer catalog designs may then be named without widths (mitchell, "
        "drum_k4). Integer specs (mitchell8s, file.c@function:s8) take +options: "
        + INTEGER_OPTIONS
        + " (default multipliers with --quantize int8: mitchell,kulkarni,drum_k4,truncated_k4; "
        "k is half the width)",
    )
    sweep.add_argument(
        "--method", choices=["auto", "lut", "native", "fast"], default="auto",
        help="how GEMMs run: auto (native for exact low-rank tables where measured faster), "
        "lut (the kernel), native (r XLA dots; an error for tables without exact factors), "
        "fast (native, each table without exact factors replaced by its best low-rank "
        "surrogate; results.json records each one's residual)",
    )  # fmt: skip
    sweep.add_argument(
        "--surrogate-rank", type=int, default=2, help="rank of --method fast's surrogates (1-16)"
    )
    sweep.add_argument("--epochs", type=int, default=3, help="training epochs (>= 1)")
    sweep.add_argument("--batch-size", type=int, default=64, help="examples per step (>= 1)")
    sweep.add_argument("--learning-rate", type=float, default=3e-3, help="Adam's step size")
    sweep.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    sweep.add_argument(
        "--mode", choices=["train", "inference", "finetune"], default="train",
        help="train each multiplier from scratch; evaluate the float32 model under each; "
        "or fine-tune the float32 model under each",
    )  # fmt: skip
    sweep.add_argument(
        "--finetune-epochs", type=int, default=1, help="epochs of fine-tuning (--mode finetune)"
    )
    sweep.add_argument(
        "--approximate",
        default="forward,input_grad,weight_grad",
        help="which GEMMs are approximate (forward is required)",
    )
    sweep.add_argument(
        "--exact-layer",
        action="append",
        help="regex of layers kept exact (repeatable), e.g. Dense_2; must match a layer",
    )
    sweep.add_argument("--first-exact", action="store_true", help="keep the first layer exact")
    sweep.add_argument("--last-exact", action="store_true", help="keep the last layer exact")
    sweep.add_argument("--train-limit", type=int, help="use only this many training examples")
    sweep.add_argument("--out", default="approxjax-results", help="output folder")
    sweep.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its checkpoints (same settings only)",
    )  # fmt: skip
    sweep.add_argument(
        "--on-existing", choices=["refuse", "move"], default="refuse",
        help="what a new run does when --out holds another run: refuse, or move it aside "
        "to OUT.old-<time>",
    )  # fmt: skip
    sweep.add_argument(
        "--mesh",
        default="auto",
        help="devices to use: 'auto' (every visible device on the data axis when the batch "
        "splits evenly), 'none' (one device), or axis sizes like 'sweep=4,data=2' "
        "(multiplier stacks split over sweep, batches over data)",
    )
    sweep.add_argument(
        "--progress", choices=["auto", "on", "off"], default="auto",
        help="progress bars on stderr (auto: when it is a terminal)",
    )  # fmt: skip
    sweep.set_defaults(func=_sweep)

    report = command(
        "report", "re-render the table and plots of a results.json (accuracy against cost too)"
    )
    report.add_argument("results", help="a results.json written by approxjax sweep")
    report.add_argument("--out", help="folder for the CSV and PNGs (default: beside the JSON)")
    report.add_argument(
        "--cost",
        help="comma-separated cost figures (power_mW, area_um2, delay_ns, ...) to plot "
        "accuracy against, each as pareto_<cost>.png with the Pareto front marked (default: "
        "every figure some multiplier carries)",
    )
    report.set_defaults(func=_report)

    char = command("characterize", "error metrics of multipliers, side by side")
    char.add_argument(
        "multipliers",
        nargs="+",
        help="catalog names (mitchell, mitchell7, drum7:k=4; integer: mitchell8s, drum8u_k4), "
        ".npz or ApproxTrain .bin files, file.c@function:m or file.c@function:s8",
    )
    char.add_argument("-m", "--mantissa-bits", type=int, help="m for names without one")
    char.add_argument(
        "--plot", help="PNG file: error heatmap and histogram, one row per multiplier"
    )
    char.set_defaults(func=_characterize)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"approxjax: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("approxjax: interrupted (checkpoints of finished epochs are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
