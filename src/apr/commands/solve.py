"""`apr solve` (one problem, a tree view) and `apr run` (a problem file to JSONL records).

Both run the spawn/join runtime over an engine: the local PyTorch engine on `--model DIR`,
or any OpenAI-compatible server (`--server URL`, e.g. vLLM, SGLang or `apr serve`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from apr.commands.options import add_engine_options, add_runtime_options, engine_spec, runtime_options
from apr.countdown import problem_from_record
from apr.engine.spec import make_engine
from apr.eval import load_problems, model_info
from apr.runfolder import run_to_file
from apr.runtime import Runtime


def cmd_run(args) -> int:
    problems = load_problems(args.problems, args.limit)  # validate the file before loading a model
    spec = engine_spec(args)
    cfg = runtime_options(args).config(model_info(spec))
    with make_engine(spec) as engine:
        done = run_to_file(engine, cfg, problems, Path(args.out), str(args.model or args.server), progress=not args.quiet)
    acc = sum(r.correct for r in done.values()) / max(len(done), 1)
    print(f"{len(done)} records in {args.out}; accuracy {acc:.3f}", file=sys.stderr)
    return 0


def cmd_solve(args) -> int:
    from rich.console import Console

    from apr.commands.trees import record_tree

    problem = problem_from_record({"nums": args.nums, "target": args.target}, "command line")
    spec = engine_spec(args)
    cfg = runtime_options(args).config(model_info(spec))
    with make_engine(spec) as engine:
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
    )
    return 0


def register(sub) -> None:
    s = sub.add_parser("solve", help="solve one problem and print its thread tree")
    s.add_argument("nums", type=int, nargs="+")
    s.add_argument("--target", type=int, required=True)
    s.add_argument("--show-text", action="store_true", help="also print the root thread's text")
    add_engine_options(s)
    add_runtime_options(s)
    s.set_defaults(func=cmd_solve)

    r = sub.add_parser("run", help="run a problem file, one JSONL record per problem (resumable)")
    r.add_argument("--problems", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--limit", type=int)
    r.add_argument("--quiet", action="store_true")
    add_engine_options(r)
    add_runtime_options(r)
    r.set_defaults(func=cmd_run)
