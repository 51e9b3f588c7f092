"""Solver demonstrations: one record per problem in the published trace fields, made in
parallel with output identical for any worker count (`apr data traces` writes them)."""

from __future__ import annotations

import json
import random
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator

from apr.checker import check
from apr.countdown import Problem, TaskConfig, generate, iter_problems
from apr.io import atomic_write
from apr.rng import derive_seed
from apr.search import AprConfig, SosConfig, solve_apr, solve_sos


def demonstration(problem: Problem, index: int, seed: int, cfg: AprConfig | SosConfig) -> dict:
    """One solver demonstration as a JSON record with the published fields.

    The solver's random stream is a function of (seed, index) only, so the output does not
    depend on how many worker processes made it.
    """
    rng = random.Random(derive_seed(seed, index))
    if isinstance(cfg, AprConfig):
        thread, solved = solve_apr(problem.nums, problem.target, cfg, rng)
        extra = {"method": "apr", "sub_calls_made": thread.count_descendants()}
    else:
        thread = solve_sos(problem.nums, problem.target, cfg, rng)
        solved = check(problem.nums, problem.target, thread.text()).correct
        extra = {"method": "sos"}
    return {
        "nums": problem.nums,
        "target": problem.target,
        "solution": problem.solution,
        "search_path": thread.text(),
        "trace_dict": thread.to_trace_dict(),
        "solved": solved,
        **extra,
        "solver": cfg.params(),
        "seed": seed,
        "index": index,
    }


def _demo_job(args) -> str:
    problem, index, seed, cfg = args
    return json.dumps(demonstration(problem, index, seed, cfg))


def demonstrations(problems: Iterator[Problem], seed: int, cfg, workers: int = 1) -> Iterator[str]:
    """JSON lines, in input order; streams, so memory stays constant whatever the count."""
    jobs = ((p, i, seed, cfg) for i, p in enumerate(problems))
    if workers <= 1:
        yield from map(_demo_job, jobs)
        return
    with Pool(workers) as pool:
        yield from pool.imap(_demo_job, jobs, chunksize=64)


def write_problems(splits: list[tuple[Path, int]], seed: int, task: TaskConfig, exclude: set,
                   workers: int = 1, progress: bool = False) -> None:
    """Draw sum(n) solvable problems from one seeded stream into the files of `splits`
    ((path, n) in order), none of them in `exclude` (problem keys) or in two files. A
    progress bar when `progress` and stderr is a terminal."""
    from tqdm import tqdm

    total = sum(n for _, n in splits)
    stream = generate(total, seed, task, exclude, workers=workers)
    with tqdm(total=total, desc="problems", unit="prob", file=sys.stderr, disable=None if progress else True) as bar:
        for path, n in splits:
            with atomic_write(path) as f:
                for _ in range(n):
                    f.write(json.dumps(next(stream).to_dict()) + "\n")
                    bar.update()


def write_traces(problems: Path, out: Path, cfg: AprConfig | SosConfig, seed: int, workers: int = 1,
                 progress: bool = False) -> tuple[int, int]:
    """A solver's demonstrations of every problem of a file into `out` (atomically);
    returns (demonstrations, solved). The whole problem file is validated first. A progress
    bar when `progress` and stderr is a terminal."""
    from tqdm import tqdm

    count = sum(1 for _ in iter_problems(problems))
    solved = 0
    with atomic_write(out) as f:
        lines = demonstrations((p for _, p in iter_problems(problems)), seed, cfg, workers)
        desc = "apr traces" if isinstance(cfg, AprConfig) else "sos traces"
        for line in tqdm(lines, total=count, desc=desc, unit="trace", file=sys.stderr,
                         disable=None if progress else True):
            solved += '"solved": true' in line
            f.write(line + "\n")
    return count, solved
