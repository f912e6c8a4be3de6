"""The approxjax command line: ``approxjax demo`` (and ``python -m approxjax``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from approxjax import demo

    demo.run(mantissa_bits=args.mantissa_bits, seed=args.seed)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
