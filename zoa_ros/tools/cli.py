"""``zoa-ros``: the command-line front end. Each subcommand lives in its own module that
provides ``add_parser(subparsers)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommands, in the order --help lists them; each is the module zoa_ros.tools.<name> with
# dashes as underscores.
COMMANDS = ("calibrate", "export", "classify", "info", "evaluate", "report", "make-bag",
            "replay", "fleet", "bank", "bench", "demo", "node")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoa-ros",
        description="Quantized image classification with zeroth-order test-time adaptation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"zoa_ros.tools.{name.replace('-', '_')}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"zoa-ros {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
