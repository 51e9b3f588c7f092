"""The command line's option vocabulary: checked types for argparse (`type=` callables, so a
bad value is refused before anything runs), one help style, hidden deprecated aliases, the
options shared by the commands that run a model, and the typed values they become.

Every check fails as one line, `apr: error: argument --limit: ...`, with exit code 2 and
nothing written (`apr.commands.main` prints it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import typing
from typing import Callable, Iterable

from apr.device import DEVICE_NAMES, is_device_name
from apr.engine.spec import EngineSpec
from apr.errors import UserError
from apr.runtime_config import CONTEXT_MAX, CONTEXT_MIN, RuntimeConfig

# ---------------------------------------------------------------------------- help

DTYPES = ("auto", "float32", "bfloat16", "float16")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help followed by its default, when it has one worth showing (not None,
    not an off switch, not an empty list). Descriptions of several lines (module docstrings)
    are kept as written; one-line ones are wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        kind = getattr(action.type, "__name__", "")
        return {"int": "N", "float": "X"}.get(kind, action.dest.upper())

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or not action.option_strings or default is None or default is False
                or default is argparse.SUPPRESS or default == [] or text is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


# ---------------------------------------------------------------------------- checked types


def _typed(name: str, check: Callable[[str], object]) -> Callable[[str], object]:
    check.__name__ = name  # argparse names the type in some messages
    return check


def int_in(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An integer within lo..hi (either end may be open)."""
    if lo is not None and hi is not None:
        want = f"an integer in {lo}..{hi}"
    elif lo is not None:
        want = {0: "an integer >= 0", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")
    else:
        want = f"an integer <= {hi}"

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return value

    return _typed("int", check)


positive_int = int_in(1)
non_negative_int = int_in(0)
context_tokens = int_in(CONTEXT_MIN, CONTEXT_MAX)
port = int_in(0, 65535)


def float_in(lo: float | None = None, hi: float | None = None, lo_open: bool = False, what: str = "") -> Callable[[str], float]:
    """A finite float within lo..hi (`lo_open`: above lo, not equal)."""
    if not what:
        if lo is not None and hi is not None:
            what = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
        elif lo is not None:
            what = f"a finite number {'>' if lo_open else '>='} {lo:g}"
        else:
            what = "a finite number"

    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        bad = not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) \
            or (hi is not None and value > hi)
        if bad:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return _typed("float", check)


non_negative_float = float_in(0.0)
probability = float_in(0.0, 1.0)


def dtype(text: str) -> str:
    if text not in DTYPES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(DTYPES)}, got {text!r}")
    return text


def device(text: str) -> str:
    if not is_device_name(text):
        raise argparse.ArgumentTypeError(f"must be {DEVICE_NAMES}, got {text!r}")
    return text


def key_value(text: str) -> str:
    """A config override KEY=VALUE (the value may be empty, the key may not)."""
    if not re.fullmatch(r"[A-Za-z_][\w.]*=.*", text, flags=re.S):
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE, got {text!r}")
    return text


def int_list(text: str) -> list[int]:
    """Comma-separated positive integers; '' is the empty list."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"must be positive integers separated by commas, got {text!r}")
    return [int(p) for p in parts]


def splits(text: str) -> list[tuple[str, int]]:
    """name=N[,name=N...] with distinct names and N >= 0."""
    out = []
    for part in text.split(","):
        name, _, n = part.partition("=")
        if not re.fullmatch(r"[\w.-]+", name.strip()) or not n.strip().isdigit():
            raise argparse.ArgumentTypeError(f"must be name=N[,name=N...], got {text!r}")
        out.append((name.strip(), int(n)))
    if len({name for name, _ in out}) != len(out):
        raise argparse.ArgumentTypeError(f"names a split twice: {text!r}")
    return out


def dir_pair(text: str) -> tuple[str, str]:
    """BEFORE,AFTER: two folders."""
    before, sep, after = text.partition(",")
    if not sep or not before or not after:
        raise argparse.ArgumentTypeError(f"must be BEFORE_DIR,AFTER_DIR, got {text!r}")
    return before, after


# ---------------------------------------------------------------------------- aliases and checks


class _DeprecatedAlias(argparse.Action):
    """A hidden old name of an option: warns on stderr, then does what the new name does."""

    def __init__(self, option_strings, dest, target: argparse.Action, **kwargs):
        super().__init__(option_strings, dest, nargs=target.nargs, type=target.type, choices=target.choices,
                         default=argparse.SUPPRESS, help=argparse.SUPPRESS, metavar=target.metavar)
        self.target = target

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"apr: warning: {option_string} is deprecated; use {self.target.option_strings[-1]}", file=sys.stderr)
        self.target(parser, namespace, values, option_string)


def add_deprecated_alias(p: argparse.ArgumentParser, old: str, new: str) -> None:
    """Keep `old` working as a hidden alias of the option `new` (already added to `p`)."""
    target = p._option_string_actions[new]
    p.add_argument(old, dest=target.dest, action=_DeprecatedAlias, target=target)


def add_quiet(p: argparse.ArgumentParser, what: str = "progress bars and status lines") -> None:
    p.add_argument("--quiet", action="store_true",
                   help=f"no {what} (bars are off anyway when stderr is not a terminal)")


# ---------------------------------------------------------------------------- running a model


def add_device_options(p: argparse.ArgumentParser) -> None:
    """--device and --dtype, as every command that loads a model has them."""
    p.add_argument("--device", type=device, default="auto", metavar="DEVICE", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--dtype", type=dtype, default="auto", metavar="DTYPE",
                   help=f"weights: {', '.join(DTYPES)} (auto: bfloat16 on a GPU, float32 on CPU)")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="model folder (local engine; with --server, the folder whose "
                                                  "tokenizer the server's model uses)")
    p.add_argument("--server", metavar="URL", help="OpenAI-compatible server instead of the local engine, e.g. "
                                                   "http://127.0.0.1:8000 (needs --model)")
    p.add_argument("--served-model", metavar="NAME",
                   help="with --server: the model name to ask for (default: the first it lists)")
    add_device_options(p)
    p.add_argument("--max-slots", type=positive_int, default=EngineSpec.max_slots, metavar="N",
                   help="local engine: sequences decoded together")


def check_engine_options(args: argparse.Namespace) -> None:
    """The engine options given apply to the engine that runs: the runtime counts tokens with
    the model folder's tokenizer, also for a server; --served-model names a server's model;
    the local engine's options (device, dtype, slots) do nothing for a server and are refused."""
    if args.server and not args.model:
        raise UserError("--server needs --model DIR too: the model folder whose tokenizer the server's model uses")
    if args.served_model and not args.server:
        raise UserError("--served-model names a server's model; it needs --server")
    if args.server:
        for name in LOCAL_ENGINE_OPTIONS:
            if getattr(args, name) != getattr(EngineSpec, name):
                raise UserError(f"--{name.replace('_', '-')} applies to the local engine; with --server the server "
                                "decides it")


# EngineSpec fields the local engine reads and a server ignores.
LOCAL_ENGINE_OPTIONS = ("device", "dtype", "max_slots")


def engine_spec(args: argparse.Namespace) -> EngineSpec:
    return EngineSpec(model=args.model, server=args.server, served_model=args.served_model, device=args.device,
                      dtype=args.dtype, max_slots=args.max_slots, context=args.context)


def add_config_options(p: argparse.ArgumentParser, cls, names: Iterable[str] | None = None,
                       skip: Iterable[str] = ()) -> None:
    """One option per field of the dataclass `cls` (all, or those in `names`, less `skip`), built
    from the field as a config dataclass describes it (the way TRL's HfArgumentParser does):
    `--field-name`, dest the field's name, its default, and from its metadata (`setting` in
    apr.runtime_config) the help, the metavar and a checked type for its bounds or choices.
    Old names of the options (OLD_OPTIONS) stay as hidden deprecated aliases."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if (names is not None and f.name not in names) or f.name in skip:
            continue
        m, flag = f.metadata, "--" + f.name.replace("_", "-")
        kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
        if m["choices"] is not None:
            p.add_argument(flag, dest=f.name, choices=m["choices"], default=f.default, help=m["help"])
        else:
            check = int_in(m["lo"], m["hi"]) if kind is int else float_in(m["lo"], m["hi"], m["lo_open"])
            p.add_argument(flag, dest=f.name, type=check, default=f.default, metavar=m["metavar"], help=m["help"])
        for old, new in OLD_OPTIONS.items():
            if new == flag:
                add_deprecated_alias(p, old, new)


# Options renamed to one name per idea: old -> new, kept as hidden deprecated aliases.
OLD_OPTIONS = {"--sub-call-budget": "--child-budget"}


def add_runtime_options(p: argparse.ArgumentParser, method: bool = True) -> None:
    """The RuntimeConfig fields as options; `method=False` for commands with their own --method."""
    add_config_options(p, RuntimeConfig, skip=() if method else ("method",))


def runtime_config(args: argparse.Namespace, method: bool = True) -> RuntimeConfig:
    """The RuntimeConfig the options of `add_runtime_options(p, method)` gave (unset ones None)."""
    return RuntimeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RuntimeConfig)
                            if method or f.name != "method"})
