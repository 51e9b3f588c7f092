"""The `apr` command line. Each command module exposes `register(subparsers)`.

Heavy imports (torch, transformers) happen inside the command functions, so `apr --help`
and the data commands start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from apr.errors import UserError

# Modules that add subcommands, in the order `apr --help` lists them.
COMMAND_MODULES = [
    "apr.commands.demo",
    "apr.commands.data",
    "apr.commands.solve",
    "apr.commands.train",
    "apr.commands.serve",
    "apr.commands.eval",
    "apr.commands.report",
    "apr.commands.pipeline",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apr", description="Adaptive Parallel Reasoning on Countdown")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"apr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("apr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return int(rc or 0)


