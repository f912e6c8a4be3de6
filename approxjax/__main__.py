"""The approxjax command line (also ``python -m approxjax``).

Commands: ``sweep`` (the main job), ``report``, ``demo``, ``lut build``, ``lut info``,
``characterize``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from approxjax import demo

    demo.run(mantissa_bits=args.mantissa_bits, seed=args.seed)
    return 0


def _lut_build(args: argparse.Namespace) -> int:
    import approxjax as ax

    mult = ax.from_c(
        args.source,
        args.function,
        args.mantissa_bits,
        name=args.name,
        flags=args.flag or (),
        validate="warn" if args.allow_mismatch else True,
    )
    path = ax.save_lut(mult, args.output)
    print(f"wrote {path}: {mult.name}, m={mult.mantissa_bits}")
    print(ax.characterize(mult))
    return 0


def _lut_info(args: argparse.Namespace) -> int:
    import approxjax as ax
    from approxjax import experiment

    mult = experiment.load_multiplier(args.file)
    for key, value in sorted(mult.metadata.items()):
        print(f"{key:>18}: {value}")
    print(ax.characterize(mult))
    return 0


def _characterize(args: argparse.Namespace) -> int:
    import approxjax as ax
    from approxjax import experiment

    results = []
    for spec in args.multipliers:
        mult = experiment.load_multiplier(spec, args.mantissa_bits)
        results.append(ax.characterize(mult))
        if args.plot:
            path = args.plot
            if len(args.multipliers) > 1:
                stem, dot, ext = args.plot.rpartition(".")
                path = (
                    f"{stem}_{mult.name.replace(':', '_')}.{ext}" if dot else f"{path}_{mult.name}"
                )
            ax.plot_errors(mult, path)
            print(f"plot: {path}")
    print(ax.format_table(results))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from approxjax import experiment

    cfg = experiment.SweepConfig(
        model=args.model,
        dataset=args.dataset,
        multipliers=[m for m in args.multipliers.split(",") if m],
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
        train_limit=args.train_limit,
        out_dir=args.out,
        resume=args.resume,
        mesh=args.mesh,
    )
    results = experiment.run_sweep(cfg, progress=lambda msg: print(msg, flush=True))
    print(experiment.format_results(results))
    print(f"wrote {args.out}/results.json, results.csv, curves.png")
    return 0


def _report(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from approxjax import experiment

    path = Path(args.results)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read results file {path}: {e}") from e
    print(experiment.format_results(results))
    experiment.write_outputs(results, Path(args.out) if args.out else path.parent)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="approxjax",
        description="Simulate approximate multipliers in JAX/Flax networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="a small network's outputs and error under a few multipliers vs float32"
    )
    demo.add_argument(
        "--mantissa-bits",
        "-m",
        type=int,
        nargs="+",
        default=[3, 5, 7],
        help="mantissa bits of the truncated multipliers to compare (default: 3 5 7)",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    lut = sub.add_parser("lut", help="build and inspect lookup-table files")
    lut_sub = lut.add_subparsers(dest="lut_command", metavar="LUT_COMMAND", required=True)
    build = lut_sub.add_parser("build", help="tabulate a C/C++ model into an .npz LUT")
    build.add_argument("source", help="C or C++ file with float f(float, float)")
    build.add_argument("--function", required=True, help="the model's function name")
    build.add_argument("-m", "--mantissa-bits", type=int, required=True)
    build.add_argument("-o", "--output", required=True, help="output .npz file")
    build.add_argument("--name", help="the multiplier's name (default: function + m)")
    build.add_argument("--flag", action="append", help="extra compiler flag (repeatable)")
    build.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="warn instead of failing when the model depends on more than the mantissas",
    )
    build.set_defaults(func=_lut_build)
    info = lut_sub.add_parser("info", help="metadata and error metrics of a LUT file")
    info.add_argument("file", help=".npz (approxjax) or .bin (ApproxTrain) table")
    info.set_defaults(func=_lut_info)

    sweep = sub.add_parser("sweep", help="train/evaluate a model under float32 and multipliers")
    sweep.add_argument(
        "--model",
        default="cnn",
        help="mlp, cnn, lenet5, resnet8, resnet20, transformer (default cnn)",
    )
    sweep.add_argument(
        "--dataset",
        default="digits",
        help="digits, mnist, fashion_mnist, cifar10, text (default digits)",
    )
    sweep.add_argument("--data-dir", help="dataset folder (for text: the text file)")
    sweep.add_argument(
        "--multipliers",
        default="truncated7,mitchell7,mbm7,drum7",
        help="comma-separated catalog names with m, .npz/.bin LUT files, or file.c@function:m",
    )
    sweep.add_argument("--epochs", type=int, default=3)
    sweep.add_argument("--batch-size", type=int, default=64)
    sweep.add_argument("--learning-rate", type=float, default=3e-3)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--mode", choices=["train", "inference", "finetune"], default="train")
    sweep.add_argument("--finetune-epochs", type=int, default=1)
    sweep.add_argument(
        "--approximate",
        default="forward,input_grad,weight_grad",
        help="which GEMMs are approximate (forward is required)",
    )
    sweep.add_argument(
        "--exact-layer",
        action="append",
        help="regex of layers kept exact (repeatable), e.g. Dense_2",
    )
    sweep.add_argument("--first-exact", action="store_true")
    sweep.add_argument("--last-exact", action="store_true")
    sweep.add_argument("--train-limit", type=int, help="use only this many training examples")
    sweep.add_argument("--out", default="approxjax-results", help="output folder")
    sweep.add_argument("--resume", action="store_true", help="continue from checkpoints in --out")
    sweep.add_argument(
        "--mesh",
        default="auto",
        help="devices to use: 'auto' (every visible device on the data axis when the batch "
        "splits evenly), 'none' (one device), or axis sizes like 'sweep=4,data=2' "
        "(multiplier stacks split over sweep, batches over data)",
    )
    sweep.set_defaults(func=_sweep)

    report = sub.add_parser("report", help="re-render the table and plots of a results.json")
    report.add_argument("results")
    report.add_argument("--out", help="folder for the CSV and PNG (default: beside the JSON)")
    report.set_defaults(func=_report)

    char = sub.add_parser("characterize", help="error metrics of multipliers, side by side")
    char.add_argument(
        "multipliers",
        nargs="+",
        help="catalog names (mitchell, mitchell7, drum7:k=4), .npz or ApproxTrain .bin files",
    )
    char.add_argument("-m", "--mantissa-bits", type=int, help="m for names without one")
    char.add_argument("--plot", help="PNG file for the error heatmap and histogram")
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
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"approxjax: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
