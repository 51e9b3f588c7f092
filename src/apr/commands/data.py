"""`apr data problems`, `apr data traces` and `apr verify`: problem files, solver
demonstrations, and checking answers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

from apr.checker import check
from apr.countdown import TaskConfig, problem_keys
from apr.data import write_problems, write_traces
from apr.errors import UserError
from apr.io import atomic_write, read_records
from apr.search import AprConfig, SosConfig


def _task_from_args(args) -> TaskConfig:
    task = TaskConfig(args.num_count, args.num_min, args.num_max, args.target_min, args.target_max)
    task.validate()
    return task


def _parse_splits(text: str) -> list[tuple[str, int]]:
    out = []
    for part in text.split(","):
        name, _, n = part.partition("=")
        if not name.strip() or not n.strip().isdigit():
            raise UserError(f"--splits wants name=N[,name=N...], got {text!r}")
        out.append((name.strip(), int(n)))
    return out


def cmd_problems(args) -> int:
    task = _task_from_args(args)
    exclude = problem_keys(args.exclude or [])
    if args.splits:
        splits = _parse_splits(args.splits)
        out_dir = Path(args.out)
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError("with --splits, --out must be a directory", str(out_dir))
    else:
        if args.n is None:
            raise UserError("give --n N (or --splits name=N,...)")
        if args.n < 0:
            raise UserError(f"--n must be >= 0, got {args.n}")
        splits = [(None, args.n)]
    paths = [(Path(args.out) / f"{name}.jsonl" if name else Path(args.out), n) for name, n in splits]
    write_problems(paths, args.seed, task, exclude, args.workers, args.progress)
    for path, n in paths:
        print(f"wrote {n} problems to {path}", file=sys.stderr)
    return 0


def _solver_config(args) -> AprConfig | SosConfig:
    lo, hi = args.beam_min or 1, args.beam_max or (10 if args.solver == "apr" else 5)
    if not 1 <= lo <= hi:
        raise UserError(f"beam range must satisfy 1 <= --beam-min <= --beam-max, got {lo}..{hi}")
    for name in ("spawn_prob", "sub_search_prob"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise UserError(f"--{name.replace('_', '-')} must be in 0..1")
    if args.max_depth < 0 or args.child_beam_max < 1:
        raise UserError("--max-depth must be >= 0 and --child-beam-max >= 1")
    if args.solver == "apr":
        return AprConfig(
            beam_min=args.beam_min or 1,
            beam_max=args.beam_max or 10,
            child_beam_max=args.child_beam_max,
            spawn_prob=args.spawn_prob,
            max_depth=args.max_depth,
            heuristic=args.heuristic,
            sub_call_budget=args.sub_call_budget,
        )
    return SosConfig(
        beam_min=args.beam_min or 1,
        beam_max=args.beam_max or 5,
        sub_search_prob=args.sub_search_prob,
        heuristic=args.heuristic,
    )


def cmd_traces(args) -> int:
    count, solved = write_traces(Path(args.problems), Path(args.out), _solver_config(args), args.seed, args.workers,
                                 args.progress)
    print(f"wrote {count} {args.solver} demonstrations to {args.out} ({solved} solved)", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    def results() -> Iterator[str]:
        for line, rec in read_records(args.input):
            nums, target, text = rec.get("nums"), rec.get("target"), rec.get("text")
            if not isinstance(nums, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in nums):
                raise UserError("`nums` must be a list of integers", args.input, line)
            if not isinstance(target, int) or isinstance(target, bool):
                raise UserError("`target` must be an integer", args.input, line)
            if not isinstance(text, str):
                raise UserError("`text` must be a string", args.input, line)
            v = check(nums, target, text)
            yield json.dumps({**rec, "correct": v.correct, "reason": v.reason})

    if args.out:
        with atomic_write(args.out) as f:
            for r in results():
                f.write(r + "\n")
    else:
        out = list(results())  # all lines checked before any is printed
        sys.stdout.write("".join(r + "\n" for r in out))
    return 0


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-count", type=int, default=4, help="numbers per problem (2..6)")
    p.add_argument("--num-min", type=int, default=1)
    p.add_argument("--num-max", type=int, default=99)
    p.add_argument("--target-min", type=int, default=10)
    p.add_argument("--target-max", type=int, default=100)


def register(sub) -> None:
    data = sub.add_parser("data", help="generate problems and solver demonstrations")
    dsub = data.add_subparsers(dest="data_command", metavar="WHAT", required=True)

    p = dsub.add_parser("problems", help="draw solvable Countdown problems")
    p.add_argument("--n", type=int, help="how many problems")
    p.add_argument("--splits", help="several disjoint files, e.g. train=1000,val=100,test=100 (--out is a folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--exclude", action="append", help="keep every problem of this file out (repeatable)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    _add_task_options(p)
    p.set_defaults(func=cmd_problems)

    t = dsub.add_parser("traces", help="solver demonstrations in the published trace language (JSONL)")
    t.add_argument("--solver", choices=["apr", "sos"], required=True)
    t.add_argument("--problems", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--beam-min", type=int, help="smallest beam (default 1)")
    t.add_argument("--beam-max", type=int, help="largest beam (default 10 for apr, 5 for sos)")
    t.add_argument("--child-beam-max", type=int, default=15, help="apr: a child's beam is uniform in parent beam..this")
    t.add_argument("--spawn-prob", type=float, default=0.9, help="apr: chance to spawn when >1 node was kept")
    t.add_argument("--max-depth", type=int, default=1, help="apr: levels of spawning (children spawn again when >1)")
    t.add_argument("--sub-search-prob", type=float, default=0.5, help="sos: chance to double down per expansion")
    t.add_argument("--heuristic", choices=["mult", "sum"], default="mult")
    t.add_argument("--sub-call-budget", action="store_true", help="apr: prefix `Sub Call Budget: N `")
    t.add_argument("--no-progress", dest="progress", action="store_false")
    t.set_defaults(func=cmd_traces)

    v = sub.add_parser("verify", help="check {nums, target, text} lines; adds `correct` and `reason`")
    v.add_argument("--input", required=True)
    v.add_argument("--out")
    v.set_defaults(func=cmd_verify)
