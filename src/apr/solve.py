"""`apr solve` (one problem, a tree view) and `apr run` (a problem file to JSONL records).

Both run the spawn/join runtime over an engine: the local PyTorch engine on `--model DIR`,
or any OpenAI-compatible server (`--server URL`, e.g. vLLM, SGLang or `apr serve`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterator

from apr.countdown import Problem, iter_problems
from apr.errors import UserError
from apr.engine.base import EngineError
from apr.runtime import Runtime, RuntimeConfig


# ---------------------------------------------------------------------------- engines

def add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder (local engine; with --server: where the tokenizer is)")
    p.add_argument("--server", help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--served-model", help="model name to ask the server for")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-slots", type=int, default=64, help="local engine: sequences decoded together")


def add_runtime_options(p: argparse.ArgumentParser, method: bool = True, temperature_help: str = "") -> None:
    """Runtime limits, budgets and sampling; `method=False` for commands with their own --method."""
    if method:
        p.add_argument("--method", choices=["apr", "sos"], help="default: what the model was trained for")
    p.add_argument("--context", type=int, default=4096, help="tokens per thread; a thread reaching it fails its problem")
    p.add_argument("--max-children", type=int, default=16)
    p.add_argument("--max-depth", type=int, default=1)
    p.add_argument("--max-total-tokens", type=int, default=200_000)
    p.add_argument("--sub-call-budget", type=int, help="APR: `Sub Call Budget: N` (default 10 if the model was trained with it)")
    p.add_argument("--token-budget", type=int, help="SoS+: `Token Budget: N` (default 4096 if the model was trained with it)")
    if temperature_help:
        p.add_argument("--temperature", type=float, help=temperature_help)
    else:
        p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-in-flight", type=int, default=32, help="problems decoding at once")


def model_info(args):
    from apr.model import ModelInfo, load_model_info

    if args.model:
        if not Path(args.model).is_dir():
            raise UserError("model folder not found", args.model)
        return load_model_info(args.model)
    return ModelInfo()


def make_engine(args):
    """The engine the options name. Errors (missing folder, unreachable server) are one line."""
    if args.server:
        from apr.engine.openai import OpenAIEngine

        return OpenAIEngine(args.server, model=args.served_model, tokenizer=args.model)
    if not args.model:
        raise UserError("give --model DIR (or --server URL)")
    from apr.engine.local import LocalEngine

    return LocalEngine(args.model, max_slots=args.max_slots, max_len=args.context, device=args.device, dtype=args.dtype)


def runtime_config(args, info) -> RuntimeConfig:
    return RuntimeConfig.for_model(
        info, method=args.method, sub_call_budget=args.sub_call_budget, token_budget=args.token_budget,
        context=args.context, max_children=args.max_children, max_depth=args.max_depth,
        max_total_tokens=args.max_total_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, max_in_flight=args.max_in_flight)


# ---------------------------------------------------------------------------- records on disk

def read_finished(path: Path, expect: dict) -> dict[int, dict]:
    """Records already in `path` (for resuming), by problem index. A torn last line (a crash
    mid-write) is dropped; records of another model or method are refused."""
    from apr.io import read_appended

    done: dict[int, dict] = {}
    for k, rec in read_appended(path):
        for key, value in expect.items():
            if rec.get(key) != value:
                raise UserError(f"holds records of another run ({key} {rec.get(key)!r}, not {value!r}); use another --out", str(path), k)
        done[rec["index"]] = rec
    return done


def run_to_file(engine, cfg: RuntimeConfig, problems: list[tuple[int, Problem]], out: Path, extra: dict, progress: bool = True) -> dict[int, dict]:
    """Run the problems not yet in `out`, appending each record as it finishes (flushed, so a
    crash keeps every finished one); returns all records by index."""
    from tqdm import tqdm

    done = read_finished(out, {k: extra[k] for k in ("model", "method") if k in extra})
    todo = [(i, p) for i, p in problems if i not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=f"{cfg.method} run", unit="prob", file=sys.stderr, disable=not progress)
    correct = sum(r["correct"] for r in done.values())
    with open(out, "a") as f:
        try:
            for rec in Runtime(engine, cfg).iter_run(todo):
                rec.update(extra)
                f.write(json.dumps(rec) + "\n")
                f.flush()
                done[rec["index"]] = rec
                correct += rec["correct"]
                bar.update()
                bar.set_postfix(acc=f"{correct / len(done):.3f}")
        except EngineError as e:
            f.flush()
            os.fsync(f.fileno())
            raise UserError(f"engine failed ({e}); {len(done)} finished records kept in {out}: rerun to resume") from None
    bar.close()
    return done


def load_problems(path: str) -> list[tuple[int, Problem]]:
    return [(k, p) for k, (_, p) in enumerate(iter_problems(path))]


# ---------------------------------------------------------------------------- commands

def cmd_run(args) -> int:
    problems = load_problems(args.problems)  # validate the file before loading a model
    if args.limit is not None:
        problems = problems[: args.limit]
    info = model_info(args)
    cfg = runtime_config(args, info)
    with make_engine(args) as engine:
        extra = {"model": str(args.model or args.server), "method": cfg.method}
        done = run_to_file(engine, cfg, problems, Path(args.out), extra, progress=not args.quiet)
    acc = sum(r["correct"] for r in done.values()) / max(len(done), 1)
    print(f"{len(done)} records in {args.out}; accuracy {acc:.3f}", file=sys.stderr)
    return 0


def thread_tree(rec: dict):
    from rich.tree import Tree

    def label(t: dict) -> str:
        first = t["prompt"].split("\n")[0]
        status = {"done": "[green]done[/]", "cut": "[red]cut[/]", "failed": "[red]failed[/]"}.get(t["status"], t["status"])
        won = " [bold green]goal[/]" if t["text"].count("equal: Goal Reached") >= 2 else ""
        return f"{first}  [dim]{t['tokens']} tokens, context {t['context_tokens']}, steps {t['start_step']}-{t['end_step']}[/] {status}{won}"

    def add(node, t: dict) -> None:
        for g in t["children"]:
            for c in g:
                add(node.add(label(c)), c)

    root = Tree(label(rec["threads"]))
    add(root, rec["threads"])
    return root


def cmd_solve(args) -> int:
    from rich.console import Console

    from apr.countdown import problem_from_record

    problem = problem_from_record({"nums": args.nums, "target": args.target}, "command line")
    info = model_info(args)
    cfg = runtime_config(args, info)
    with make_engine(args) as engine:
        rec = Runtime(engine, cfg).run([(0, problem)])[0]
    console = Console()
    console.print(thread_tree(rec))
    if args.show_text:
        console.print(rec["text"], markup=False, highlight=False)
    verdict = f"[green]correct[/]: {', '.join(rec['answer'])}" if rec["correct"] else f"[red]incorrect[/]: {rec['reason']}"
    console.print(verdict)
    console.print(
        f"total tokens {rec['total_tokens']}, sequential tokens {rec['sequential_tokens']}, "
        f"longest thread {rec['longest_thread']}, children {rec['children']}, latency {rec['latency_s']:.2f} s"
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
