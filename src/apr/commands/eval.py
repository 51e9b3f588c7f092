"""`apr eval`: accuracy, tokens and latency of a model (or a symbolic solver) on a problem
set, into a resumable run folder. The evaluation itself is `apr.eval`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import apr.eval
from apr.commands.options import (
    add_engine_options,
    add_quiet,
    add_runtime_options,
    check_engine_options,
    engine_spec,
    positive_int,
    runtime_config,
)
from apr.eval import EvalSpec, evaluate
from apr.eval_summary import describe
from apr.io import check_output_dir


def method(text: str) -> str:
    """An evaluation method (`apr.eval.METHOD_RE`)."""
    if not apr.eval.METHOD_RE.match(text):
        raise argparse.ArgumentTypeError(f"must be apr, sos, cons@N, pass@N (N >= 1), solver-apr or solver-sos; "
                                         f"got {text!r}")
    return text


def eval_spec(args: argparse.Namespace) -> EvalSpec:
    return EvalSpec(method=args.method, out=Path(args.out), engine=engine_spec(args), runtime=runtime_config(args, method=False),
                    problems=args.problems, limit=args.limit, label=args.label, progress=not args.quiet,
                    max_result=args.max_result)


def cmd_eval(args) -> int:
    check_output_dir(args.out, {"problems": args.problems})
    if not args.method.startswith("solver-"):
        check_engine_options(args)
    s = evaluate(eval_spec(args))
    print(describe(s, args.out), file=sys.stderr)
    return 0


def add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", type=method, required=True, metavar="METHOD",
                   help="apr | sos | cons@N | pass@N (N samples per problem) | solver-apr | solver-sos")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder: run.json, records.jsonl, summary.json (resumed)")
    p.add_argument("--problems", metavar="FILE", help="problem file (default: the model's validation set)")
    p.add_argument("--limit", type=positive_int, help="first N problems only (default: all)")
    p.add_argument("--label", metavar="TEXT", help="name in reports (default: family, method and budget)")
    p.add_argument("--max-result", type=positive_int, metavar="N",
                   help="solver-apr, solver-sos: leave out operations whose result is above N, as `apr data traces "
                   "--max-result N` did for the model compared with (default: none)")
    add_quiet(p, "progress bar")
    add_engine_options(p)
    add_runtime_options(p, method=False)


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy, tokens and latency on a problem set",
                       description=apr.eval.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_options(p)
    p.set_defaults(func=cmd_eval)
