"""Competence measures of a run, from its records: how often a model's arithmetic is wrong,
how often a parent is handed a false success claim by a child, and why samples failed.

- Arithmetic error rate: the share of `Exploring Operation` lines, over every thread of a
  record's thread tree (`Record.threads`; a record without one, e.g. a solver row, counts its
  text as one thread), whose operands are not among the current numbers (those of the
  latest `Current State` line before it in that thread), whose result is wrong, or that do
  not parse. Only what a thread wrote itself counts: the join text the runtime inserted
  into a parent (its children's paths) is skipped, the children are counted as threads.
- False-claim join rate: the share of joins at which at least one child's result was passed
  on as a success (`<Goal Reached in Sub Search ...>`) although its path does not replay
  (`checker.replay`) from the child's start state (`Current State` of its prompt) to its
  target. Under the `verified` join rule such claims are joined as failures instead and
  counted in `Record.rejected_claims` (summed here as `rejected_claims`).
- Failure reasons: the reasons of the records that are not correct, grouped into the
  runtime's stops (`runtime.RUNTIME_FAILURES`) and the checker's verdict classes
  (`checker.reason_class`).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from apr.checker import OP_RE, apply_op, reason_class, replay
from apr.protocol import Thread, join_results, start_state
from apr.records import Record
from apr.runtime import RUNTIME_FAILURES

_STATE_RE = re.compile(r"Current State: \d+:\[([^\]]*)\]")
_OP_PREFIX = "Exploring Operation:"


def _numbers(text: str) -> Counter | None:
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    if not all(p.isdecimal() and len(p) <= 40 for p in parts):
        return None
    return Counter(int(p) for p in parts)


def operation_errors(text: str) -> tuple[int, int]:
    """(operations, wrong operations) of one thread's own text."""
    ops = wrong = 0
    current: Counter | None = None
    for line in text.split("\n"):
        s = _STATE_RE.search(line)
        if s:
            current = _numbers(s.group(1))
        if _OP_PREFIX not in line:
            continue
        ops += 1
        m = OP_RE.search(line)
        if not m or current is None or max(len(m.group(1)), len(m.group(3)), len(m.group(4))) > 40:
            wrong += 1
            continue
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        need = Counter([a, b])
        if any(current[k] < v for k, v in need.items()) or apply_op(a, op, b) != c:
            wrong += 1
    return ops, wrong


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
    ops = wrong = joins = bad_joins = bad_claims = rejected = 0
    reasons: dict[str, Counter] = {"runtime": Counter(), "checker": Counter()}
    for rec in records:
        threads = list(Thread.from_json(rec.threads).walk()) if rec.threads else []
        if not threads:
            n, w = operation_errors(rec.text)
            ops, wrong = ops + n, wrong + w
        for t in threads:
            n, w = operation_errors(t.own_text())
            ops, wrong = ops + n, wrong + w
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
        "false_claim_join_rate": bad_joins / joins if joins else 0.0,
        "joins": joins,
        "false_claim_joins": bad_joins,
        "false_claims": bad_claims,
        "rejected_claims": rejected,
        "failure_reasons": {g: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for g, c in reasons.items()},
    }


def describe(c: dict) -> str:
    """One line: `arithmetic errors 12.3% of 456 operations; false claims at 3/20 joins (15.0%)`."""
    line = (f"arithmetic errors {100 * c['arithmetic_error_rate']:.1f}% of {c['operations']} operations; "
            f"false claims at {c['false_claim_joins']}/{c['joins']} joins ({100 * c['false_claim_join_rate']:.1f}%)")
    if c.get("rejected_claims"):
        line += f", {c['rejected_claims']} rejected"
    return line


# ---------------------------------------------------------------------------- exact arithmetic

_RESULT_RE = re.compile(re.escape(_OP_PREFIX) + r" \d+[+\-*/]\d+=(\d+)")


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
