"""The approxjax command line (also ``python -m approxjax``).

Commands: ``demo``, ``lut build``, ``lut info``, ``characterize``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from approxjax import demo

    demo.run(mantissa_bits=args.mantissa_bits, seed=args.seed)
    return 0


def _multiplier_from_spec(spec: str, m: int | None):
    """A catalog name (mitchell7), an .npz LUT file or an ApproxTrain .bin file."""
    import approxjax as ax

    if spec.endswith(".npz"):
        return ax.load_lut(spec)
    if spec.endswith(".bin"):
        return ax.load_approxtrain(spec)
    return ax.get(spec, m)


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

    mult = _multiplier_from_spec(args.file, None)
    for key, value in sorted(mult.metadata.items()):
        print(f"{key:>18}: {value}")
    print(ax.characterize(mult))
    return 0


def _characterize(args: argparse.Namespace) -> int:
    import approxjax as ax

    results = []
    for spec in args.multipliers:
        mult = _multiplier_from_spec(spec, args.mantissa_bits)
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
