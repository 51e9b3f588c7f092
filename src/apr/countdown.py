"""The Countdown task: problems, legal operations, an exhaustive solver, a seeded generator,
problem files, and problem keys.

Operations on a pair (a, b): a+b, a*b, larger-minus-smaller, and larger/smaller when exact.
Every intermediate value is a non-negative integer. `-` and `/` are written larger first;
`+` and `*` keep the pair's order in the current list.

A problem's key, (sorted numbers, target), is its identity: splits (training, validation,
evaluation) must not share one. `Problem.key`, `record_key` and `problem_keys` give it for a
problem, a JSON record and whole files.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Iterable, Iterator

from apr.rng import derive_seed
from apr.errors import UserError
from apr.io import read_records

# Numbers above this are refused wherever text is parsed (the checker, the trace parser):
# no legal Countdown path from small inputs gets near it, and it keeps int() cheap.
MAX_NUMBER_DIGITS = 12


@dataclass(frozen=True)
class TaskConfig:
    """What problems look like. The published task is the default."""

    num_count: int = 4
    num_min: int = 1
    num_max: int = 99
    target_min: int = 10
    target_max: int = 100

    def validate(self) -> None:
        if not 2 <= self.num_count <= 6:
            raise UserError(f"count of numbers must be 2..6, got {self.num_count}")
        if not 0 <= self.num_min <= self.num_max:
            raise UserError(f"bad number range {self.num_min}..{self.num_max}")
        if not 0 <= self.target_min <= self.target_max:
            raise UserError(f"bad target range {self.target_min}..{self.target_max}")
        if max(self.num_max, self.target_max) >= 10**MAX_NUMBER_DIGITS:
            raise UserError(f"numbers and targets must stay below 10^{MAX_NUMBER_DIGITS}")
        if self.target_min > self.largest_reachable():
            raise UserError(f"no target in {self.target_min}..{self.target_max} is reachable from "
                            f"{self.num_count} numbers in {self.num_min}..{self.num_max}")

    def largest_reachable(self) -> int:
        """An upper bound on any value the operations can make from this task's numbers: for
        values >= 2 a product is at least the sum, so the bound is the larger of the two."""
        k, m = self.num_count, self.num_max
        return max(m**k, k * m)

    def as_dict(self) -> dict:
        return {
            "num_count": self.num_count,
            "num_range": [self.num_min, self.num_max],
            "target_range": [self.target_min, self.target_max],
        }

    @classmethod
    def from_dict(cls, d: object, path: str | None = None, line: int | None = None) -> "TaskConfig":
        """The task an `as_dict` record describes (apr.json `task`, a demonstration's `task`),
        checked: an object whose keys, where present, hold an integer count and [low, high]
        integer ranges (missing keys: the published task's). A UserError names `path`."""
        if not isinstance(d, dict):
            raise UserError(f"`task` must be an object like {TaskConfig().as_dict()}, got {d!r}"[:200], path, line)
        default = cls()
        count = d.get("num_count", default.num_count)
        ranges = []
        for key, fallback in (("num_range", (default.num_min, default.num_max)),
                              ("target_range", (default.target_min, default.target_max))):
            r = d.get(key, list(fallback))
            if not (isinstance(r, list) and len(r) == 2 and all(_is_int(x) for x in r)):
                raise UserError(f"`task.{key}` must be [low, high] integers, got {r!r}"[:200], path, line)
            ranges.append(r)
        if not _is_int(count):
            raise UserError(f"`task.num_count` must be an integer, got {count!r}"[:200], path, line)
        task = cls(count, *ranges[0], *ranges[1])
        try:
            task.validate()
        except UserError as e:
            raise UserError(f"`task`: {e.message}", path, line) from None
        return task

    def outside(self, nums: list[int], target: int) -> str | None:
        """What puts a problem outside this task (None: nothing)."""
        if len(nums) != self.num_count:
            return f"{len(nums)} numbers; the task has {self.num_count}"
        bad = [x for x in nums if not self.num_min <= x <= self.num_max]
        if bad:
            return f"number {bad[0]} outside the task's {self.num_min}..{self.num_max}"
        if not self.target_min <= target <= self.target_max:
            return f"target {target} outside the task's {self.target_min}..{self.target_max}"
        return None


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


ProblemKey = tuple[tuple[int, ...], int]


@dataclass
class Problem:
    nums: list[int]
    target: int
    solution: list[str] = field(default_factory=list)

    @property
    def key(self) -> ProblemKey:
        """This problem's identity, (sorted numbers, target): problems that differ only in
        the order of their numbers are the same problem."""
        return tuple(sorted(self.nums)), self.target

    def to_dict(self) -> dict:
        return {"nums": list(self.nums), "target": self.target, "solution": list(self.solution)}


def successors(a: int, b: int) -> list[tuple[str, int]]:
    """Every legal (operation text, result) for the pair (a, b), in a fixed order."""
    hi, lo = (a, b) if a >= b else (b, a)
    out = [(f"{a}+{b}={a + b}", a + b), (f"{a}*{b}={a * b}", a * b), (f"{hi}-{lo}={hi - lo}", hi - lo)]
    if lo != 0 and hi % lo == 0:
        out.append((f"{hi}/{lo}={hi // lo}", hi // lo))
    return out


def expand(nums: list[int]) -> Iterator[tuple[str, list[int]]]:
    """All (operation, resulting numbers) from a state: remaining numbers in order, result last."""
    for i, j in itertools.combinations(range(len(nums)), 2):
        rest = [n for k, n in enumerate(nums) if k != i and k != j]
        for op, value in successors(nums[i], nums[j]):
            yield op, rest + [value]


def solve(nums: list[int], target: int, first: bool = True) -> list[list[str]]:
    """Exhaustive search. Returns the first solution found (as a one-item list), or all of them."""
    found: list[list[str]] = []
    seen: set[tuple[int, ...]] = set()  # a multiset already known to fail

    def dfs(state: list[int], path: list[str]) -> bool:
        if len(state) == 1:
            if state[0] == target:
                found.append(list(path))
                return first
            return False
        key = tuple(sorted(state))
        if first and key in seen:
            return False
        for op, nxt in expand(state):
            path.append(op)
            if dfs(nxt, path):
                return True
            path.pop()
        if first:
            seen.add(key)
        return False

    dfs(list(nums), [])
    return found


# ---------------------------------------------------------------------------- generation

# Redraws of the numbers for one target before a new target is drawn, and targets tried
# before a task setting is declared unable to produce problems. Real tasks need a handful of
# redraws; these bounds only end settings that would otherwise loop forever.
REDRAWS_PER_TARGET = 10_000
TARGETS_PER_PROBLEM = 20


# Counting a task's problems exactly walks every multiset of numbers through every order of
# operations; above this many leaves of that walk, a combinatorial upper bound stands in.
EXACT_COUNT_WORK = 3_000_000


def count_problems_possible(task: TaskConfig) -> int:
    """How many distinct problems (sorted numbers, target) this task setting can produce,
    exactly when the task is small enough to count (EXACT_COUNT_WORK), else an upper bound:
    the multisets of numbers times the targets in range. `apr data problems` refuses a
    count above it before drawing anything."""
    task.validate()
    k, span = task.num_count, task.num_max - task.num_min + 1
    multisets = math.comb(span + k - 1, k)
    targets = min(task.target_max, task.largest_reachable()) - task.target_min + 1
    leaves = math.prod(4 * math.comb(j, 2) for j in range(2, k + 1))  # operation orders of k numbers
    if multisets * leaves > EXACT_COUNT_WORK:
        return multisets * targets
    values = range(task.num_min, task.num_max + 1)
    return sum(sum(1 for v in _finals(nums) if task.target_min <= v <= task.target_max)
               for nums in itertools.combinations_with_replacement(values, k))


@functools.lru_cache(maxsize=100_000)
def _finals(nums: tuple[int, ...]) -> frozenset[int]:
    """Every value the operations can end with, using all of `nums` (sorted)."""
    if len(nums) == 1:
        return frozenset(nums)
    out: set[int] = set()
    for _, rest in expand(list(nums)):
        out |= _finals(tuple(sorted(rest)))
    return frozenset(out)


def problem_record_bytes(task: TaskConfig) -> int:
    """About the bytes one problem line of this task takes in a problem file (its largest
    numbers, a solution of as many products of them), for sizing an output before writing."""
    m = task.num_max
    big = Problem([m] * task.num_count, task.target_max, [f"{m}*{m}={m * m}"] * (task.num_count - 1))
    return len(json.dumps(big.to_dict())) + 1


def _draw(task: TaskConfig, seed: int, index: int) -> Problem:
    """Problem number `index` of the stream for `seed`: a pure function of both."""
    rng = random.Random(derive_seed(seed, index))
    for _ in range(TARGETS_PER_PROBLEM):
        target = rng.randint(task.target_min, task.target_max)
        for _ in range(REDRAWS_PER_TARGET):  # redraw the numbers until the problem is solvable
            nums = [rng.randint(task.num_min, task.num_max) for _ in range(task.num_count)]
            sol = solve(nums, target)
            if sol:
                return Problem(nums, target, sol[0])
    raise UserError(f"this task setting produced no solvable problem in {TARGETS_PER_PROBLEM * REDRAWS_PER_TARGET:,} "
                    f"draws ({task.as_dict()}); widen the number or target range")


def _draw_chunk(args: tuple[TaskConfig, int, int, int]) -> list[Problem]:
    task, seed, start, stop = args
    return [_draw(task, seed, i) for i in range(start, stop)]


def generate(
    n: int,
    seed: int = 0,
    task: TaskConfig = TaskConfig(),
    exclude: set | None = None,
    workers: int = 1,
    chunk: int = 256,
) -> Iterator[Problem]:
    """Yield `n` distinct problems, none of whose keys is in `exclude`.

    Candidates come from a fixed stream indexed 0, 1, 2, ...; duplicates and excluded keys
    are dropped in stream order, so the output is the same for any number of workers.
    """
    task.validate()
    seen = set(exclude or ())
    produced = 0
    start = 0
    pool = Pool(workers) if workers > 1 else None
    try:
        while produced < n:
            need = n - produced
            # A round draws a little more than is missing (duplicates get dropped), capped so
            # a huge `n` streams in bounded rounds instead of planning every chunk up front.
            size = min(max(chunk, need + need // 8), chunk * 256)
            bounds = [(task, seed, s, min(s + chunk, start + size)) for s in range(start, start + size, chunk)]
            start += size
            chunks = pool.imap(_draw_chunk, bounds) if pool else map(_draw_chunk, bounds)
            for problems in chunks:
                for p in problems:
                    if produced >= n or p.key in seen:
                        continue
                    seen.add(p.key)
                    produced += 1
                    yield p
            if start > 1000 * (n + 1000):
                raise UserError(f"could not draw {n} distinct problems from this task's ranges")
    finally:
        if pool:
            pool.terminate()


# ---------------------------------------------------------------------------- reading

def problem_from_record(rec: dict, path: str = "<input>", line: int | None = None) -> Problem:
    """Validate a record with `nums` and `target` (and optional `solution`); a UserError
    names `path` and `line` otherwise."""
    nums, target = rec.get("nums"), rec.get("target")
    if not isinstance(nums, list) or not nums:
        raise UserError("`nums` must be a non-empty list of integers", path, line)
    for x in nums:
        if not isinstance(x, int) or isinstance(x, bool):
            raise UserError(f"`nums` holds a non-integer: {x!r}", path, line)
        if x < 0:
            raise UserError(f"`nums` holds a negative number: {x}", path, line)
        if len(str(x)) > MAX_NUMBER_DIGITS:
            raise UserError(f"`nums` holds a number too large: {x}", path, line)
    if not 2 <= len(nums) <= 6:
        raise UserError(f"`nums` must hold 2..6 numbers, got {len(nums)}", path, line)
    if not isinstance(target, int) or isinstance(target, bool):
        raise UserError(f"`target` must be an integer, got {target!r}", path, line)
    if target < 0 or len(str(target)) > MAX_NUMBER_DIGITS:
        raise UserError(f"`target` out of range: {target}", path, line)
    solution = rec.get("solution") or []
    if not isinstance(solution, list) or not all(isinstance(s, str) for s in solution):
        raise UserError("`solution` must be a list of operation strings", path, line)
    return Problem(list(nums), target, list(solution))


def read_problems(path: str | Path) -> list[Problem]:
    """Read a JSON list or JSONL file of problems; errors name the file and line."""
    return [problem for _, problem in iter_problems(path)]


def iter_problems(path: str | Path) -> Iterator[tuple[int, Problem]]:
    """(line, problem) for each record of a JSON list or JSONL file, streaming; errors name
    the file and line."""
    for line, rec in read_records(path):
        yield line, problem_from_record(rec, str(path), line)


# ---------------------------------------------------------------------------- keys

def record_key(rec: dict) -> ProblemKey:
    """The key of a JSON record with `nums` and `target` (a problem, a demonstration, a run
    record), without validating the rest of it: `Problem.key` of the problem it holds.

    Raises KeyError, TypeError or ValueError when `nums` or `target` is missing or not
    integers; callers turn that into a UserError naming their file and line.
    """
    return tuple(sorted(int(n) for n in rec["nums"])), int(rec["target"])


def problem_keys(paths: Iterable[str | Path]) -> set[ProblemKey]:
    """The keys of every problem in the given problem files (each read and validated with
    `read_problems`, so a bad line is a UserError naming its file and line)."""
    keys: set[ProblemKey] = set()
    for p in paths:
        keys.update(prob.key for prob in read_problems(p))
    return keys
