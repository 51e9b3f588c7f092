"""Competence measures of a run, from its records: how often a model's arithmetic is wrong,
how often a parent is handed a false success claim by a child, and why samples failed.

- Arithmetic error rate: the share of `Exploring Operation` lines, over every thread of a
  record's thread tree (`Record.threads`; a record without one, e.g. a solver row, counts its
  text as one thread), whose operands are not among the current numbers (those of the
  latest `Current State` line before it in that thread), whose result is wrong, or that do
  not parse. Only what a thread wrote itself counts: the join text the runtime inserted
  into a parent (its children's paths) is skipped, the children are counted as threads.
  A thread's last line with no newline after it is unfinished (the thread was stopped
  there: its window, a cancellation, a runtime stop). An operation line there is judged
  once its result is written out (`Exploring Operation: 9*3=27,`); cut before that, it
  holds no result or part of one, and is counted as `unfinished_operations`, not judged.
  (Before session 7 every such line counted as an error: 45 of the SoS+ model's 239 at a
  512-token window, all of them the last line of a stopped search.) Likewise a move whose
  `Current State` line was cut is not judged for the state copy rate.
- Where the arithmetic errors are (`arithmetic_breakdown`): the same lines and errors by
  operation (+ - * /), operand size (digits of the larger operand: 1, 2, 3, 4+), result size
  (digits of the true result a op b; of the written result when a op b is none, e.g. a
  negative difference or an inexact quotient), thread (`parent`: the root, `child`: any
  spawned thread) and path (`on`: the operation, as written, is one of the path the thread
  passed on: for the root the record's final path, `checker.claimed_ops`, for a child the
  path its parent's join received from it; `off`: any other). A line that does not parse
  is `unreadable` in the operation and size breakdowns and off the path. Beside it, the
  wrong results (lines that parse with a result other than a op b) and how many of them
  are the problem's target: a thread writing the number it hopes for.
- False-claim join rate: the share of joins at which at least one child's result was passed
  on as a success (`<Goal Reached in Sub Search ...>`) although its path does not replay
  (`checker.replay`) from the child's start state (`Current State` of its prompt) to its
  target. Under the `verified` join rule such claims are joined as failures instead and
  counted in `Record.rejected_claims` (summed here as `rejected_claims`).
- State copy error rate: the share of a thread's moves to a node it generated (`Moving to
  Node #X` after `Generated Node #X`) whose next line, `Current State`, is not X's state as
  generated (numbers and operations). A serial search copies the state of the node it moves
  to from far back in its own text; a small SoS+ model learns to copy the state of the node
  its heuristic ranks best whatever id it wrote (`apr.train.drills`), so a move can land on
  a node the search never generated and skip the one it named. APR children are handed
  their start state by the runtime, which does not count (it is no move in their own text).
- Goal verdict errors: the share of goal lines `X,T equal: Goal Reached` / `X,T unequal: No
  Solution` whose verdict is wrong (equal for X not T, or unequal for X = T), over every
  thread's own text, and the same among near misses (`near_miss`: X within 9 of T, or T's
  digits swapped). A child that says equal for a result beside its target passes on a false
  claim, and the first claim wins the join; the CPU line's APR children did so for about
  half their near misses (issue 17, `apr.train.drills` goal drills).
- Failure reasons: the reasons of the records that are not correct, grouped into the
  runtime's stops (`runtime.RUNTIME_FAILURES`) and the checker's verdict classes
  (`checker.reason_class`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

from apr.checker import OP_RE, apply_op, claimed_ops, path_ops, reason_class, replay
from apr.protocol import Thread, join_results, node_moves, start_state
from apr.records import Record
from apr.runtime import RUNTIME_FAILURES

_STATE_RE = re.compile(r"Current State: \d+:\[([^\]]*)\]")
_OP_PREFIX = "Exploring Operation:"
# An operation whose result is written out (the comma after it), in a line cut after that
_CLOSED_RE = re.compile(r"Exploring Operation: (\d+)([+\-*/])(\d+)=(\d+),")
_MAX_DIGITS = 40  # longer numbers are never among the current ones (`_numbers`); nothing is computed with them
UNREADABLE = "unreadable"
# The breakdowns of `arithmetic_breakdown` and their keys, in table order (`unreadable` is
# added to the first three when a line does not parse).
BREAKDOWNS = {
    "by_op": ("+", "-", "*", "/"),
    "by_operand_digits": ("1", "2", "3", "4+"),
    "by_result_digits": ("1", "2", "3", "4+"),
    "by_thread": ("parent", "child"),
    "by_path": ("on", "off"),
}


def _numbers(text: str) -> Counter | None:
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    if not all(p.isdecimal() and len(p) <= 40 for p in parts):
        return None
    return Counter(int(p) for p in parts)


@dataclass(frozen=True)
class OpLine:
    """One `Exploring Operation` line of a thread's own text, as the error rate reads it."""

    written: str | None  # `a op b=c` as written; None when the line does not parse
    op: str | None  # + - * /
    operand_digits: int | None  # digits of the larger operand
    result_digits: int | None  # digits of a op b; of the written result when a op b is none
    result: int | None  # the written result (None: unparsable or over-long)
    wrong: bool  # operands not among the current numbers, a wrong result, or unparsable
    wrong_result: bool  # parses, and the written result is not a op b


def _digits(s: str) -> int:
    return len(s.lstrip("0")) or 1


def _cut_operation(text: str) -> bool:
    """Whether `text` ends in an operation line (no newline after it: the thread was stopped
    there) cut before its result was written out (the comma after it): such a line holds no
    result, or part of one, and is not judged."""
    tail = text[text.rfind("\n") + 1:]
    return _OP_PREFIX in tail and not _CLOSED_RE.search(tail)


def _judge(m: re.Match, current: Counter | None) -> OpLine:
    sa, op, sb, sc = m.group(1, 2, 3, 4)
    written = f"{sa}{op}{sb}={sc}" if len(m.group(0)) < 200 else None
    size = max(_digits(sa), _digits(sb))
    if max(len(sa), len(sb), len(sc)) > _MAX_DIGITS:
        return OpLine(written, op, size, _digits(sc), None, True, False)
    a, b, c = int(sa), int(sb), int(sc)
    value = apply_op(a, op, b)
    result_wrong = value != c
    off_state = current is None or any(current[k] < v for k, v in Counter([a, b]).items())
    digits = _digits(str(value)) if value is not None else _digits(sc)
    return OpLine(written, op, size, digits, c, off_state or result_wrong, result_wrong)


def operation_lines(text: str) -> list[OpLine]:
    """The `Exploring Operation` lines of one thread's own text, each judged against the
    numbers of the latest `Current State` line before it. A last line the thread did not
    finish is judged once its result is written out (`..=27,`), and skipped before."""
    out = []
    current: Counter | None = None
    lines = text.split("\n")
    for i, line in enumerate(lines):
        s = _STATE_RE.search(line)
        if s:
            current = _numbers(s.group(1))
        if _OP_PREFIX not in line:
            continue
        m = OP_RE.search(line) if i < len(lines) - 1 else _CLOSED_RE.search(line)
        if m:
            out.append(_judge(m, current))
        elif i < len(lines) - 1:
            out.append(OpLine(None, None, None, None, None, True, False))
    return out


def operation_errors(text: str) -> tuple[int, int]:
    """(operations, wrong operations) of one thread's own text."""
    lines = operation_lines(text)
    return len(lines), sum(line.wrong for line in lines)


NEAR_MISS = 9  # a result at most this far from the target is a near miss (or the target's digits swapped)
_VERDICT_RE = re.compile(rf"^(\d{{1,{_MAX_DIGITS}}}),(\d{{1,{_MAX_DIGITS}}}) (equal: Goal Reached|unequal: No Solution)$", re.M)


def near_miss(x: int, target: int) -> bool:
    """A result easily taken for the target: not it, but within NEAR_MISS of it, or its two
    digits swapped (`79` for `97`)."""
    swapped = 10 <= x <= 99 and 10 <= target <= 99 and x == 10 * (target % 10) + target // 10
    return x != target and (abs(x - target) <= NEAR_MISS or swapped)


def verdict_errors(text: str) -> Counter:
    """Goal lines of one thread's own text: `verdicts`, `verdict_errors`, and the same for
    near misses (`near_miss_verdicts`, `near_miss_verdict_errors`)."""
    c: Counter = Counter()
    for m in _VERDICT_RE.finditer(text):
        x, t, says_equal = int(m.group(1)), int(m.group(2)), m.group(3).startswith("equal")
        wrong = says_equal != (x == t)
        c["verdicts"] += 1
        c["verdict_errors"] += wrong
        if near_miss(x, t):
            c["near_miss_verdicts"] += 1
            c["near_miss_verdict_errors"] += wrong
    return c


def state_copy_errors(text: str) -> tuple[int, int]:
    """(moves to a generated node, moves whose `Current State` line is not that node's) of
    one thread's own text."""
    # a move whose state line the thread did not finish (cut after the move) is not judged
    def state_finished(m) -> bool:
        end = text.find("\n", m.at)
        return end >= 0 and text.find("\n", end + 1) >= 0

    moves = [m for m in node_moves(text) if state_finished(m)]
    wrong = sum(1 for m in moves if m.written is None or (m.written.nums, m.written.ops) != (m.named.nums, m.named.ops))
    return len(moves), wrong


def own_texts(threads: dict | None, text: str) -> list[str]:
    """What each thread of a record wrote itself (join text left out), from the record's JSON
    thread tree; a record without one is one thread, its `text` (as `record_threads` reads it)."""
    return [t.own_text() for t in Thread.from_json(threads).walk()] if threads else [text]


def record_threads(rec: Record) -> Iterator[tuple[Thread | None, str, frozenset[str]]]:
    """(thread, `parent` | `child`, operations of the path it passed on) for every thread of a
    record, depth first; a record without a thread tree is one thread, None, its text."""
    final = frozenset(claimed_ops(rec.text) or ())
    if not rec.threads:
        yield None, "parent", final
        return

    def walk(t: Thread, kind: str, path: frozenset[str]):
        yield t, kind, path
        for k, group in enumerate(t.children):
            passed = join_results(t.joins[k], [c.node for c in group]) if k < len(t.joins) else [None] * len(group)
            for child, p in zip(group, passed):
                yield from walk(child, "child", frozenset(path_ops(p)) if p else frozenset())

    yield from walk(Thread.from_json(rec.threads), "parent", final)


class Breakdown:
    """Operations and errors counted by the keys of `BREAKDOWNS`, and the wrong results."""

    def __init__(self) -> None:
        self.counts = {dim: {key: [0, 0] for key in keys} for dim, keys in BREAKDOWNS.items()}
        self.wrong_results = self.at_target = 0

    def add(self, line: OpLine, kind: str, on_path: bool, target: int) -> None:
        size = lambda n: UNREADABLE if n is None else str(n) if n < 4 else "4+"
        keys = {"by_op": line.op or UNREADABLE, "by_operand_digits": size(line.operand_digits),
                "by_result_digits": size(line.result_digits), "by_thread": kind, "by_path": "on" if on_path else "off"}
        for dim, key in keys.items():
            cell = self.counts[dim].setdefault(key, [0, 0])
            cell[0] += 1
            cell[1] += line.wrong
        if line.wrong_result:
            self.wrong_results += 1
            self.at_target += line.result == target

    def to_json(self) -> dict:
        entry = lambda n, e: {"operations": n, "errors": e, "rate": e / n if n else 0.0}
        out: dict = {dim: {key: entry(*cell) for key, cell in cells.items()} for dim, cells in self.counts.items()}
        out["wrong_results"] = {"results": self.wrong_results, "equal_target": self.at_target,
                                "share": self.at_target / self.wrong_results if self.wrong_results else 0.0}
        return out


def false_claims(thread: Thread) -> list[int]:
    """For each join of a thread: how many children's passed-on success claims do not replay
    from the child's start state."""
    out = []
    for k, join in enumerate(thread.joins):
        group = thread.children[k] if k < len(thread.children) else []
        paths = join_results(join, [c.node for c in group])
        bad = 0
        for child, path in zip(group, paths):
            if path is None:
                continue
            start = start_state(child.prompt)
            if start is None or not replay(start.nums, start.target, path).correct:
                bad += 1
        out.append(bad)
    return out


def failure_class(reason: str) -> tuple[str, str]:
    """("runtime" | "checker", class) of a failed record's reason."""
    for stop in RUNTIME_FAILURES:
        if reason.startswith(stop):
            return "runtime", stop
    kind = reason_class(reason)
    if kind is not None:
        return "checker", kind
    return "checker", reason.split(":")[0][:60] or "?"


def measure(records: Iterable[Record]) -> dict:
    """The competence measures of some records (every sample counts)."""
    ops = wrong = unfinished = joins = bad_joins = bad_claims = rejected = moves = bad_moves = 0
    where = Breakdown()
    verdicts: Counter = Counter()
    reasons: dict[str, Counter] = {"runtime": Counter(), "checker": Counter()}
    for rec in records:
        for t, kind, path in record_threads(rec):
            own = rec.text if t is None else t.own_text()
            for line in operation_lines(own):
                ops, wrong = ops + 1, wrong + line.wrong
                where.add(line, kind, line.written in path, rec.target)
            unfinished += _cut_operation(own)
            verdicts.update(verdict_errors(own))
            n, bad = state_copy_errors(own)
            moves, bad_moves = moves + n, bad_moves + bad
            if t is None:
                continue
            per_join = false_claims(t)
            joins += len(per_join)
            bad_joins += sum(1 for b in per_join if b)
            bad_claims += sum(per_join)
        rejected += rec.rejected_claims or 0
        if not rec.correct:
            group, kind = failure_class(rec.reason)
            reasons[group][kind] += 1
    return {
        "arithmetic_error_rate": wrong / ops if ops else 0.0,
        "operations": ops,
        "arithmetic_errors": wrong,
        "arithmetic_breakdown": where.to_json(),
        "unfinished_operations": unfinished,
        "state_copy_error_rate": bad_moves / moves if moves else 0.0,
        "moves": moves,
        "state_copy_errors": bad_moves,
        "verdict_error_rate": verdicts["verdict_errors"] / verdicts["verdicts"] if verdicts["verdicts"] else 0.0,
        "near_miss_verdict_error_rate": (verdicts["near_miss_verdict_errors"] / verdicts["near_miss_verdicts"]
                                         if verdicts["near_miss_verdicts"] else 0.0),
        **{k: verdicts[k] for k in ("verdicts", "verdict_errors", "near_miss_verdicts", "near_miss_verdict_errors")},
        "false_claim_join_rate": bad_joins / joins if joins else 0.0,
        "joins": joins,
        "false_claim_joins": bad_joins,
        "false_claims": bad_claims,
        "rejected_claims": rejected,
        "failure_reasons": {g: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for g, c in reasons.items()},
    }


def result_rate(c: dict, digits: tuple[str, ...] = ("3", "4+")) -> tuple[int, float] | None:
    """(operations, error rate) of the lines whose results have these digit counts; None when
    the measures predate the breakdown or there are none."""
    cells = [(c.get("arithmetic_breakdown") or {}).get("by_result_digits", {}).get(d) for d in digits]
    n = sum(x["operations"] for x in cells if x)
    if not n:
        return None
    return n, sum(x["errors"] for x in cells if x) / n


def describe(c: dict) -> str:
    """One line: `arithmetic errors 12.3% of 456 operations (3+ digit results 26.0%); false
    claims at 3/20 joins (15.0%)` (the 3+ digit rate when there are such results)."""
    large = result_rate(c)
    line = (f"arithmetic errors {100 * c['arithmetic_error_rate']:.1f}% of {c['operations']} operations"
            + (f" (3+ digit results {100 * large[1]:.1f}%)" if large else "")
            + (f", {c['unfinished_operations']} cut unfinished" if c.get("unfinished_operations") else "") + "; "
            f"false claims at {c['false_claim_joins']}/{c['joins']} joins ({100 * c['false_claim_join_rate']:.1f}%)")
    if c.get("rejected_claims"):
        line += f", {c['rejected_claims']} rejected"
    if c.get("near_miss_verdicts"):
        line += (f"; near misses called equal at {c['near_miss_verdict_errors']}/{c['near_miss_verdicts']} "
                 f"goal lines ({100 * c['near_miss_verdict_error_rate']:.1f}%)")
    if c.get("moves"):
        line += f"; states copied wrong at {c['state_copy_errors']}/{c['moves']} moves ({100 * c['state_copy_error_rate']:.1f}%)"
    return line


# ---------------------------------------------------------------------------- exact arithmetic

_RESULT_RE = re.compile(re.escape(_OP_PREFIX) + r" \d+[+\-*/]\d+=(\d+),")  # written out, as judged


def forced_results(records: Iterable[Record]) -> int:
    """Exact arithmetic (apr.arithmetic): the operations whose result the engine wrote (a
    forced span within it), over every thread.

    What the arithmetic error rate means under the mode: the operation count is still the
    model's own choices (whether to explore, which pair, which operator), but its operands were
    limited to the current numbers and these results are right by construction, so the errors
    left are those of lines the mode left to the model (no state line to read, text outside
    the grammar). It is no measure of the model's arithmetic; reports say how many results
    were forced beside it."""
    n = 0
    for rec in records:
        for t in Thread.from_json(rec.threads).walk() if rec.threads else ():
            for seg, spans in zip(t.segments, t.forced_spans or []):
                n += sum(any(a < m.end(1) and b > m.start(1) for a, b in spans) for m in _RESULT_RE.finditer(seg))
    return n
