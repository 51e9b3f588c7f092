"""Problem sets and solver demonstrations: the files the commands read and write.

Problem files: the packaged Countdown-4 validation set (`packaged_validation_set`, the one
place that finds it), a model's validation set (`default_problems`), loading a set with
every line checked (`load_problems`) and drawing new ones (`write_problems`). Solver
demonstrations: one record per problem in the published trace fields, made in parallel with
output identical for any worker count (`apr data traces` writes them).
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
from importlib import resources
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator

from apr.checker import check
from apr.countdown import Problem, TaskConfig, count_problems_possible, generate, iter_problems, problem_record_bytes
from apr.device import check_memory
from apr.errors import UserError
from apr.io import atomic_write, check_free_disk
from apr.model_folder import DEFAULT_TASK
from apr.rng import derive_seed
from apr.search import AprConfig, SosConfig, solve_apr, solve_sos


def packaged_validation_set() -> Path:
    """The shared Countdown-4 validation set shipped in the package (apr/resources/): what
    evaluation runs on by default and what training data must not overlap."""
    return Path(str(resources.files("apr") / "resources" / "countdown4_val1000.jsonl"))


def default_problems(model_dir: str | Path | None, task: dict | None) -> Path:
    """A model's validation set: `val_problems.jsonl` in its folder (written by `apr pipeline`
    for tasks other than the published one), else the packaged Countdown-4 set."""
    if model_dir and (Path(model_dir) / "val_problems.jsonl").is_file():
        return Path(model_dir) / "val_problems.jsonl"
    if task is None or task == DEFAULT_TASK:
        return packaged_validation_set()
    raise UserError(f"the model's task {task} has no packaged validation set; give `problems` (a problem file)",
                    model_dir, fields=("problems",))


def load_problems(path: str | Path, limit: int | None = None) -> list[tuple[int, Problem]]:
    """(index, problem) of a problem file, every line validated before any work starts."""
    problems = [(k, p) for k, (_, p) in enumerate(iter_problems(str(path)))]
    if limit is not None:
        if limit < 1:
            raise UserError(f"`limit` must be >= 1, got {limit}", fields=("limit",))
        problems = problems[:limit]
    return problems


def check_target_reachable(p: Problem, max_result: int | None, path: str | Path, line: int | None) -> None:
    """Refuse a cap on results (`max_result`, None: none) below a problem's target: a solver
    that leaves out every larger result could never reach it, and would write a failed search
    for it. `line`: where the problem is in the file at `path`."""
    if max_result is not None and p.target > max_result:
        raise UserError(f"target {p.target} is above `max_result` {max_result}: no search that leaves out "
                        "larger results can reach it", str(path), line, fields=("max_result",))


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


# Bytes a drawn problem's key takes while duplicates are dropped (a tuple of ints in a set).
KEY_BYTES = 200


def check_problem_request(task: TaskConfig, n: int, exclude: set, out: Path, field: str = "n") -> None:
    """Refuse, before drawing, a count this task setting cannot produce (its distinct problems
    less the excluded ones, `count_problems_possible`), or one whose keys would not fit in
    memory or whose file would not fit on the disk."""
    possible = count_problems_possible(task)
    inside = sum(1 for nums, target in exclude if task.outside(list(nums), target) is None)
    if n > possible - inside:
        task_text = (f"{task.num_count} numbers in {task.num_min}..{task.num_max}, targets in "
                     f"{task.target_min}..{task.target_max}")
        excluded = f", {inside:,} of them excluded" if inside else ""
        raise UserError(f"`{field}`: {n:,} distinct problems asked; this task setting ({task_text}) has at most "
                        f"{possible:,}{excluded}", fields=(field,))
    check_memory((n + len(exclude)) * KEY_BYTES, f"drawing {n:,} distinct problems (the keys kept to drop duplicates)",
                 fields=(field,))
    check_free_disk(out, n * problem_record_bytes(task), f"a file of {n:,} problems")


def write_problems(splits: list[tuple[Path, int]], seed: int, task: TaskConfig, exclude: set,
                   workers: int = 1, progress: bool = False, field: str = "n") -> None:
    """Draw sum(n) solvable problems from one seeded stream into the files of `splits`
    ((path, n) in order), none of them in `exclude` (problem keys) or in two files. The
    request is checked first (`check_problem_request`; `field` names the count in errors),
    and the files appear together at the end: a failure leaves none of them written. A
    progress bar when `progress` and stderr is a terminal."""
    from tqdm import tqdm

    total = sum(n for _, n in splits)
    check_problem_request(task, total, exclude, splits[0][0], field)
    stream = generate(total, seed, task, exclude, workers=workers)
    with tqdm(total=total, desc="problems", unit="prob", file=sys.stderr, disable=None if progress else True) as bar, \
            contextlib.ExitStack() as files:
        for path, n in splits:
            f = files.enter_context(atomic_write(path))
            for _ in range(n):
                f.write(json.dumps(next(stream).to_dict()) + "\n")
                bar.update()


# The fewest bytes a demonstration line takes (a Countdown-3 SoS+ trace and its fields).
TRACE_BYTES = 1000


def write_traces(problems: Path, out: Path, cfg: AprConfig | SosConfig, seed: int, workers: int = 1,
                 progress: bool = False) -> tuple[int, int]:
    """A solver's demonstrations of every problem of a file into `out` (atomically);
    returns (demonstrations, solved). The whole problem file is validated first. A progress
    bar when `progress` and stderr is a terminal."""
    from tqdm import tqdm

    count = 0
    for line, p in iter_problems(problems):  # every line checked (an empty file refused), before any is solved
        check_target_reachable(p, cfg.max_result, problems, line)
        count += 1
    check_free_disk(out, count * TRACE_BYTES, f"{count:,} demonstrations")
    solved = 0
    with atomic_write(out) as f:
        lines = demonstrations((p for _, p in iter_problems(problems)), seed, cfg, workers)
        desc = "apr traces" if isinstance(cfg, AprConfig) else "sos traces"
        for line in tqdm(lines, total=count, desc=desc, unit="trace", file=sys.stderr,
                         disable=None if progress else True):
            solved += '"solved": true' in line
            f.write(line + "\n")
    return count, solved
