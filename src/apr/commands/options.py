"""The command line's option vocabulary: checked types for argparse (`type=` callables, so a
bad value is refused before anything runs), one help style, hidden deprecated aliases, the
options shared by the commands that run a model, and the typed values they become.

Every check fails as one line, `apr: error: argument --limit: ...`, with exit code 2 and
nothing written (`apr.commands.main` prints it).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterable

from apr.engine.spec import EngineSpec
from apr.errors import UserError
from apr.runtime import JOIN_RULES, RuntimeOptions

# ---------------------------------------------------------------------------- help

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
CONTEXT_MIN, CONTEXT_MAX = 16, 1_048_576


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
top_p = float_in(0.0, 1.0, lo_open=True)


def dtype(text: str) -> str:
    if text not in DTYPES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(DTYPES)}, got {text!r}")
    return text


def device(text: str) -> str:
    if text not in DEVICES and not re.fullmatch(r"cuda:\d+", text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_output_over_input(out: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]],
                             out_option: str = "--out") -> None:
    """One-line error when an output path is one of the command's input files."""
    for option, path in inputs:
        if path is not None and same_file(out, path):
            raise UserError(f"{out_option} names the {option} file; it would be overwritten: choose another file",
                            str(out))


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
    p.add_argument("--max-slots", type=positive_int, default=64, metavar="N",
                   help="local engine: sequences decoded together")


def check_server_has_model(args: argparse.Namespace) -> None:
    """The runtime counts tokens with the model folder's tokenizer, also for a server."""
    if args.server and not args.model:
        raise UserError("--server needs --model DIR too: the model folder whose tokenizer the server's model uses")


def engine_spec(args: argparse.Namespace) -> EngineSpec:
    return EngineSpec(model=args.model, server=args.server, served_model=args.served_model, device=args.device,
                      dtype=args.dtype, max_slots=args.max_slots, context=args.context)


def add_runtime_options(p: argparse.ArgumentParser, method: bool = True, temperature_help: str = "") -> None:
    """Runtime limits, budgets and sampling; `method=False` for commands with their own --method."""
    if method:
        p.add_argument("--method", choices=["apr", "sos"], help="apr (spawn/join) or sos (serial); "
                                                                "default: what the model was trained for")
    p.add_argument("--context", metavar="TOKENS", type=context_tokens, default=4096,
                   help=f"tokens per thread, {CONTEXT_MIN}..{CONTEXT_MAX}; a thread reaching it fails its problem")
    p.add_argument("--max-children", metavar="N", type=positive_int, default=16,
                   help="children one spawn block may start; more fails the problem")
    p.add_argument("--max-depth", metavar="N", type=non_negative_int, default=1,
                   help="spawn levels (0: no spawning; children spawn again when > 1)")
    p.add_argument("--max-total-tokens", metavar="TOKENS", type=positive_int, default=200_000,
                   help="tokens generated over all threads of a problem; more fails it")
    p.add_argument("--sub-call-budget", metavar="N", type=positive_int,
                   help="APR: children to ask for, `Sub Call Budget: N` (default: the model's apr.json child_budget, "
                   "else 10 capped at 3 per pair of numbers, if the model was trained with it)")
    p.add_argument("--token-budget", metavar="TOKENS", type=positive_int,
                   help="SoS+: tokens to ask for, `Token Budget: N` (default 4096 if the model was trained with it)")
    p.add_argument("--temperature", metavar="T", type=non_negative_float, default=None if temperature_help else 0.0,
                   help=temperature_help or "sampling temperature, >= 0 (0: greedy)")
    p.add_argument("--top-k", metavar="K", type=non_negative_int, default=0, help="sample from the k likeliest tokens (0: all)")
    p.add_argument("--top-p", metavar="P", type=top_p, default=1.0, help="nucleus sampling mass, in (0, 1] (1: all)")
    p.add_argument("--seed", metavar="SEED", type=non_negative_int, default=0, help="sampling seed (each problem and thread derives its own)")
    p.add_argument("--max-in-flight", metavar="N", type=positive_int, default=32, help="problems decoding at once")
    p.add_argument("--join-rule", choices=JOIN_RULES, default="official",
                   help="what a child passes on at a join: official (the published evaluation: the text after its "
                   "second-to-last 'Goal Reached'), goal-line (only a clean path ending in a well-formed 'X,X equal' "
                   "goal line) or verified (official, but a path that does not replay from the child's state is "
                   "joined as a failed sub search); default official")


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    return RuntimeOptions(
        method=args.method if args.method in ("apr", "sos") else None,  # eval's cons@N etc. pick their own
        context=args.context, max_children=args.max_children, max_depth=args.max_depth,
        max_total_tokens=args.max_total_tokens, sub_call_budget=args.sub_call_budget, token_budget=args.token_budget,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        max_in_flight=args.max_in_flight, join_rule=args.join_rule)
