"""`apr solve` (one problem, a tree view) and `apr run` (a problem file to JSONL records).

Both run the spawn/join runtime over an engine: the local PyTorch engine on `--model DIR`,
or any OpenAI-compatible server (`--server URL`, e.g. vLLM, SGLang or `apr serve`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from apr.commands.options import (
    add_engine_options,
    add_quiet,
    add_runtime_options,
    check_engine_options,
    engine_spec,
    non_negative_int,
    positive_int,
    runtime_config,
)
from apr.arithmetic_labels import EXACT, LABEL
from apr.countdown import problem_from_record
from apr.engine.spec import make_engine
from apr.datasets import load_problems
from apr.model_folder import check_window, model_info
from apr.records import Record
from apr.io import check_output_file
from apr.runfolder import records_to_resume, run_to_file
from apr.runtime import Runtime


def check_spec_window(spec, context: int) -> None:
    """A local model's window within its positions, checked before anything loads."""
    if spec.model and not spec.server:
        check_window(spec.model, context)


def cmd_run(args) -> int:
    # Everything is checked before a model loads: the options, the problem file, the output file.
    check_output_file(args.out, {"problems": args.problems})
    check_engine_options(args)
    spec = engine_spec(args)
    problems = load_problems(args.problems, args.limit)
    cfg = runtime_config(args).resolve(model_info(spec.model))
    check_spec_window(spec, cfg.context)
    label = str(args.model or args.server)
    records_to_resume(Path(args.out), label, cfg.method, cfg.arithmetic)
    with make_engine(spec.for_window(cfg.context)) as engine:
        done = run_to_file(engine, cfg, problems, Path(args.out), label, progress=not args.quiet)
    acc = sum(r.correct for r in done.values()) / max(len(done), 1)
    print(f"{len(done)} records in {args.out}; accuracy {acc:.3f}{exact_note(list(done.values()))}", file=sys.stderr)
    return 0


def cmd_solve(args) -> int:
    from rich.console import Console

    from apr.commands.trees import record_tree

    problem = problem_from_record({"nums": args.nums, "target": args.target}, "command line")
    check_engine_options(args)
    spec = engine_spec(args)
    cfg = runtime_config(args).resolve(model_info(spec.model))
    check_spec_window(spec, cfg.context)
    with make_engine(spec.for_window(cfg.context)) as engine:
        rec = Runtime(engine, cfg).run([(0, problem)])[0]
    console = Console()
    console.print(record_tree(rec))
    if args.show_text:
        console.print(rec.text, markup=False, highlight=False)
    verdict = f"[green]correct[/]: {', '.join(rec.answer)}" if rec.correct else f"[red]incorrect[/]: {rec.reason}"
    console.print(verdict)
    console.print(
        f"total tokens {rec.total_tokens}, sequential tokens {rec.sequential_tokens}, "
        f"longest thread {rec.longest_thread}, children {rec.children}, latency {rec.latency_s:.2f} s"
        + exact_note([rec]), markup=False)
    return 0


def exact_note(records: list[Record]) -> str:
    """What a command prints after its counts under exact arithmetic (nothing otherwise)."""
    if not any(r.arithmetic == EXACT for r in records):
        return ""
    forced = sum(r.forced_tokens or 0 for r in records)
    return f" ({LABEL}: {forced} tokens written by the engine, counted in the totals)"


def register(sub) -> None:
    s = sub.add_parser("solve", help="solve one problem with a model, show its thread tree",
                       description="Solve one problem with a model (or a server) and print its spawn/join thread "
                       "tree, the checker's verdict and the token counts.")
    s.add_argument("nums", type=non_negative_int, nargs="+", metavar="N", help="the problem's numbers")
    s.add_argument("--target", type=non_negative_int, required=True, help="the number to reach")
    s.add_argument("--show-text", action="store_true", help="also print the root thread's text")
    add_engine_options(s)
    add_runtime_options(s)
    s.set_defaults(func=cmd_solve)

    r = sub.add_parser("run", help="solve a problem file: one JSONL record per problem",
                       description="Solve a problem file with a model (or a server): one JSONL record per problem, "
                       "appended as it finishes. A rerun resumes where the last one stopped.")
    r.add_argument("--problems", required=True, metavar="FILE", help="problem file (JSONL or a JSON list of {nums, target})")
    r.add_argument("--out", required=True, metavar="FILE", help="records file (JSONL) to append to; an existing one is resumed")
    r.add_argument("--limit", type=positive_int, help="first N problems only (default: all)")
    add_quiet(r, "progress bar")
    add_engine_options(r)
    add_runtime_options(r)
    r.set_defaults(func=cmd_run)
