"""The `apr` command line. Each command module exposes `register(subparsers)`.

Heavy imports (torch, transformers) happen inside the command functions, so `apr --help`
and the data commands start fast. Option values are checked by their argparse types
(`apr.commands.options`); any bad option or input ends as one line, `apr: error: ...`, with
exit code 2. Status lines go through `logging` (the `apr` logger, `--log-level`), results
are printed by the commands.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

import apr
from apr.commands.options import HelpFormatter
from apr.errors import UserError

# Modules that add subcommands, in the order `apr --help` lists them: the pipeline's order
# (data adds `data` and `verify`, solve adds `solve` and `run`).
COMMAND_MODULES = [
    "apr.commands.demo",
    "apr.commands.data",
    "apr.commands.train",
    "apr.commands.solve",
    "apr.commands.serve",
    "apr.commands.eval",
    "apr.commands.report",
    "apr.commands.pipeline",
]

LOG_LEVELS = ("debug", "info", "warning", "error")


class OptionError(UserError):
    """A bad command line (an unknown option, a bad value), reported by argparse."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (`apr: error: ...`, exit code 2, raised as
    OptionError for `main` to print) and whose help shows every option's default."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("formatter_class") in (None, argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
            kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if self.prog != "apr":
            hint = f" (see `{self.prog} --help`)"
        else:  # unknown options of a command are reported by the top parser
            hint = " (see `apr COMMAND --help`)" if message.startswith("unrecognized") else " (see `apr --help`)"
        raise OptionError(message.replace("\n", " ") + hint)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="apr", description="Adaptive Parallel Reasoning on Countdown: language models that spawn() "
                    "and join() threads.\nStart with `apr demo`; the other commands follow the pipeline, in order.",
                    epilog="`apr COMMAND --help` lists a command's options. README.md has the whole pipeline.")
    parser.add_argument("--version", action="version", version=f"apr {apr.__version__}",
                        help="print the version and exit")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default=None, metavar="LEVEL",
                        help="status lines on stderr: debug, info, warning or error (default: info; warning "
                        "with a command's --quiet)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


# ---------------------------------------------------------------------------- logging


class _StderrHandler(logging.Handler):
    """Writes to the current sys.stderr through tqdm, so a line never tears a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno == logging.INFO:
            return msg
        return f"apr: {record.levelname.lower()}: {msg}"


def configure_logging(level: str):
    """Route the `apr` loggers to stderr at `level`; returns a function that undoes it."""
    log = logging.getLogger("apr")
    saved = (log.level, log.handlers[:], log.propagate)
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    log.handlers = [handler]
    log.setLevel(level.upper())
    log.propagate = False

    def restore() -> None:
        log.level, log.handlers, log.propagate = saved[0], saved[1], saved[2]

    return restore


def _third_party_bars_off() -> None:
    """Hugging Face's own bars (e.g. `Loading weights`) follow ours: off when quiet or not a terminal."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.disable_progress_bar()


# ---------------------------------------------------------------------------- main


def option_names(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """field -> option, for the settings this command took as options (`--child-budget` for
    `child_budget`): a library error names fields, the command line names its options."""
    flags, todo = set(), [parser]
    while todo:
        p = todo.pop()
        for a in p._actions:
            flags.update(a.option_strings)
            if isinstance(a, argparse._SubParsersAction):
                todo.extend(a.choices.values())
    names = {name: "--" + name.replace("_", "-") for name in vars(args)}
    return {name: flag for name, flag in names.items() if flag in flags}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UserError as e:
        print(f"apr: error: {e}", file=sys.stderr)
        return 2
    quiet = bool(getattr(args, "quiet", False))
    restore = configure_logging(args.log_level or ("warning" if quiet else "info"))
    if quiet or not sys.stderr.isatty():
        _third_party_bars_off()
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"apr: error: {e.renamed(option_names(parser, args))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("apr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    finally:
        restore()
    return int(rc or 0)
