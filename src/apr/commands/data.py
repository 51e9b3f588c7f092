"""`apr data problems`, `apr data traces` and `apr verify`: problem files, solver
demonstrations, and checking answers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

from apr.checker import verify_record
from apr.commands.options import (
    add_deprecated_alias,
    add_quiet,
    int_in,
    non_negative_int,
    positive_int,
    probability,
    splits,
)
from apr.countdown import TaskConfig, problem_keys
from apr.datasets import write_problems, write_traces
from apr.errors import UserError
from apr.io import atomic_write, check_output_dir, check_output_file, read_records
from apr.search import ORDERS, AprConfig, SosConfig


def _task_from_args(args) -> TaskConfig:
    task = TaskConfig(args.num_count, args.num_min, args.num_max, args.target_min, args.target_max)
    task.validate()
    return task


def cmd_problems(args) -> int:
    task = _task_from_args(args)
    inputs = {"exclude": args.exclude or []}
    if args.splits:
        if args.n is not None:
            raise UserError("give --n or --splits, not both")
        check_output_dir(args.out, inputs)
        parts = args.splits
    else:
        if args.n is None:
            raise UserError("give --n N (or --splits name=N,...)")
        parts = [(None, args.n)]
    paths = [(Path(args.out) / f"{name}.jsonl" if name else Path(args.out), n) for name, n in parts]
    for path, _ in paths:
        check_output_file(path, inputs)
    exclude = problem_keys(args.exclude or [])
    write_problems(paths, args.seed, task, exclude, args.workers, progress=not args.quiet,
                   field="splits" if args.splits else "n")
    for path, n in paths:
        print(f"wrote {n} problems to {path}", file=sys.stderr)
    return 0


# Options of one solver: given with the other solver they are refused, never ignored.
SOLVER_OPTIONS = {"apr": ("child_beam_max", "spawn_prob", "max_depth", "budget_prefix"), "sos": ("sub_search_prob",)}


def _solver_config(args) -> AprConfig | SosConfig:
    lo, hi = args.beam_min or 1, args.beam_max or (10 if args.solver == "apr" else 5)
    if lo > hi:
        raise UserError(f"--beam-min must be <= --beam-max, got {lo}..{hi}")
    other = "sos" if args.solver == "apr" else "apr"
    for name in SOLVER_OPTIONS[other]:
        if getattr(args, name) not in (None, False):
            raise UserError(f"--{name.replace('_', '-')} applies to the {other} solver only; this is --solver {args.solver}")
    given = {name: getattr(args, name) for name in SOLVER_OPTIONS[args.solver] if getattr(args, name) is not None}
    cls = AprConfig if args.solver == "apr" else SosConfig
    return cls(beam_min=lo, beam_max=hi, heuristic=args.heuristic, order=args.order, max_result=args.max_result, **given)


def cmd_traces(args) -> int:
    check_output_file(args.out, {"problems": args.problems})
    count, solved = write_traces(Path(args.problems), Path(args.out), _solver_config(args), args.seed, args.workers,
                                 progress=not args.quiet)
    print(f"wrote {count} {args.solver} demonstrations to {args.out} ({solved} solved)", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    if args.out:
        check_output_file(args.out, {"input": args.input})

    def results() -> Iterator[str]:
        for line, rec in read_records(args.input):
            yield json.dumps(verify_record(rec, args.input, line))

    if args.out:
        with atomic_write(args.out) as f:
            for r in results():
                f.write(r + "\n")
    else:
        out = list(results())  # all lines checked before any is printed
        sys.stdout.write("".join(r + "\n" for r in out))
    return 0


def _add_task_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--num-count", type=int_in(2, 6), default=4, help="numbers per problem, 2..6")
    g.add_argument("--num-min", type=non_negative_int, default=1, help="smallest number")
    g.add_argument("--num-max", type=non_negative_int, default=99, help="largest number")
    g.add_argument("--target-min", type=non_negative_int, default=10, help="smallest target")
    g.add_argument("--target-max", type=non_negative_int, default=100, help="largest target")


def register(sub) -> None:
    data = sub.add_parser("data", help="draw problems and write solver demonstrations",
                          description="Problem files and solver demonstrations (JSONL).")
    dsub = data.add_subparsers(dest="data_command", metavar="WHAT", title="what to write", required=True)

    p = dsub.add_parser("problems", help="draw solvable Countdown problems",
                        description="Draw solvable Countdown problems into a JSONL file (or disjoint split files).")
    p.add_argument("--n", type=positive_int, help="how many problems, >= 1 (or --splits)")
    p.add_argument("--splits", type=splits, metavar="NAME=N,...",
                   help="several disjoint files, e.g. train=1000,val=100,test=100 (--out is then a folder)")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="SEED", help="random seed; same seed, same problems")
    p.add_argument("--out", required=True, metavar="PATH", help="JSONL file to write (a folder with --splits)")
    p.add_argument("--exclude", action="append", metavar="FILE",
                   help="keep every problem of this problem file out (repeatable)")
    p.add_argument("--workers", type=positive_int, default=1, help="processes drawing problems")
    add_quiet(p, "progress bar")
    add_deprecated_alias(p, "--no-progress", "--quiet")
    _add_task_options(p)
    p.set_defaults(func=cmd_problems)

    t = dsub.add_parser("traces", help="solver demonstrations in the published trace language",
                        description="One solver demonstration per problem (JSONL), in the published trace fields. "
                        "Output is the same for any --workers.")
    t.add_argument("--solver", choices=["apr", "sos"], required=True, help="apr (spawn/join) or sos (SoS+, serial)")
    t.add_argument("--problems", required=True, metavar="FILE", help="problem file (JSONL or a JSON list of {nums, target})")
    t.add_argument("--out", required=True, metavar="FILE", help="JSONL file to write (not the --problems file)")
    t.add_argument("--seed", type=non_negative_int, default=0, metavar="SEED", help="solver seed; each problem derives its own")
    t.add_argument("--workers", type=positive_int, default=1, help="processes running the solver")
    t.add_argument("--beam-min", type=positive_int, help="smallest beam width (default 1)")
    t.add_argument("--beam-max", type=positive_int, help="largest beam width (default 10 for apr, 5 for sos)")
    # The solver's own options default to None (its config's defaults): one given to the other solver is refused.
    t.add_argument("--child-beam-max", type=positive_int,
                   help=f"apr: a child's beam width is uniform in parent beam..this (default {AprConfig.child_beam_max})")
    t.add_argument("--spawn-prob", type=probability,
                   help=f"apr: chance to spawn when >1 node was kept, 0..1 (default {AprConfig.spawn_prob})")
    t.add_argument("--max-depth", type=non_negative_int,
                   help=f"apr: levels of spawning (children spawn again when > 1; default {AprConfig.max_depth})")
    t.add_argument("--sub-search-prob", type=probability,
                   help=f"sos: chance to double down per expansion, 0..1 (default {SosConfig.sub_search_prob})")
    t.add_argument("--heuristic", choices=["mult", "sum"], default="mult", help="node ordering heuristic")
    t.add_argument("--order", choices=ORDERS, default="shuffled",
                   help="how an expansion prints its kept nodes: shuffled (the published solvers), ranked, best "
                   "first (the same search, easier for a small model to imitate), or hybrid: generated nodes "
                   "ranked, a node's last operations (single-number results) shuffled")
    t.add_argument("--max-result", type=positive_int, metavar="N",
                   help="leave out every operation whose result is above N, as if it were not legal (default: none; "
                   "e.g. the largest target, 100: a search a small model can compute, see docs/reports/cpu_runs.md)")
    t.add_argument("--budget-prefix", action="store_true",
                   help="apr: prefix each root prompt with its child count, `Sub Call Budget: N `")
    add_deprecated_alias(t, "--sub-call-budget", "--budget-prefix")
    add_quiet(t, "progress bar")
    add_deprecated_alias(t, "--no-progress", "--quiet")
    t.set_defaults(func=cmd_traces)

    v = sub.add_parser("verify", help="check answers: add `correct` and `reason` to each line",
                       description="Check {nums, target, text} JSONL lines with the checker; each line gets "
                       "`correct` and `reason`. All lines are checked before any is written.")
    v.add_argument("--input", required=True, metavar="FILE", help="JSONL file of {nums, target, text} lines")
    v.add_argument("--out", metavar="FILE", help="JSONL file to write (default: stdout; not the --input file)")
    v.set_defaults(func=cmd_verify)
