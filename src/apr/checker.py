"""Decide whether a text solves a problem, exactly as the published APR evaluation does.

The final path is the thread's result (`protocol.official_result`): the text after the
second-to-last occurrence of `Goal Reached` (and the one character after it); a text with
fewer than two occurrences has none and is not correct. The path is replayed from the
problem's numbers: every line holding an `Exploring Operation: a op b=c, Resulting Numbers:
[...]` match must use two numbers of the current list (removed once each), state the right
result, and list the resulting numbers (compared sorted); the first line containing `Goal
Reached` ends the replay, correct when the current list is exactly [target]. `Current State`
lines and the goal line's own numbers are not read. docs/evaluation.md ("How an answer is
judged") lists every rule with an example. Nothing is ever evaluated as code, and no input
string makes this raise.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from apr.errors import UserError
from apr.protocol import GOAL_REACHED, official_result, parse_list


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str
    path: tuple[str, ...] = ()  # the operations of the accepted path

    def __bool__(self) -> bool:
        return self.correct


# An operation anywhere in a line, as the published evaluation matches it.
OP_RE = re.compile(r"Exploring Operation: (\d+)([+\-*/])(\d+)=(\d+), Resulting Numbers: \[([^\]]*)\]")


def apply_op(a: int, op: str, b: int) -> int | None:
    """The result of an operation as the published evaluation computes it, else None: `-` as
    written (a result below zero can never equal a written number), `/` only when exact."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a >= b else None
    if op == "/":
        return a // b if b != 0 and a % b == 0 else None
    return None


def _digit_cap(nums: list[int]) -> int:
    """More digits than any number reachable from `nums` can have (a product of all of them,
    plus a carry per sum): a longer number in a text can never be in the current list, so it
    is refused before it is converted (the verdict is the same, the cost bounded)."""
    return sum(len(str(abs(n))) for n in nums) + len(nums) + 1


def replay(nums: list[int], target: int, path: str) -> Verdict:
    """Replay a final path (the text a thread passed on) from `nums` towards `target`."""
    try:
        return _replay(list(nums), int(target), path if isinstance(path, str) else "")
    except Exception as e:  # a checker bug must not take a batch down with it
        return Verdict(False, f"checker error: {type(e).__name__}")


def _replay(nums: list[int], target: int, path: str) -> Verdict:
    current = list(nums)
    cap = _digit_cap(nums + [target])
    ops: list[str] = []
    for line in path.split("\n"):
        m = OP_RE.search(line)
        if m:
            sa, op, sb, sc = m.group(1), m.group(2), m.group(3), m.group(4)
            shown = f"{sa}{op}{sb}={sc}" if len(sa) + len(sb) + len(sc) < 40 else "an over-long operation"
            rest = list(current)
            for s in (sa, sb):
                if len(s) > cap or int(s) not in rest:
                    return Verdict(False, f"operand not among the numbers: {shown} with {current}")
                rest.remove(int(s))
            value = apply_op(int(sa), op, int(sb))
            if value is None or len(sc) > cap or value != int(sc):
                return Verdict(False, f"wrong arithmetic: {shown}")
            listed = parse_list(m.group(5), cap)
            if listed is None:
                return Verdict(False, f"malformed resulting numbers after {shown}")
            current = rest + [value]
            if sorted(listed) != sorted(current):
                return Verdict(False, f"resulting numbers do not match: {shown} leaves {sorted(current)}")
            ops.append(f"{sa}{op}{sb}={sc}")
        if GOAL_REACHED in line:
            if current != [target]:
                return Verdict(False, f"final path ends off target: {current} after {len(ops)} operations, not [{target}]")
            return Verdict(True, "correct", tuple(ops))
    return Verdict(False, "final path has no `Goal Reached` line")


def check(nums: list[int], target: int, text: str) -> Verdict:
    """Correct when the text's final path (its `official_result`) solves (nums, target)."""
    if not isinstance(text, str):
        text = ""
    try:
        path = official_result(text)
    except Exception as e:
        return Verdict(False, f"checker error: {type(e).__name__}")
    if path is None:
        n = text.count(GOAL_REACHED)
        if n == 1:
            return Verdict(False, "no final path: `Goal Reached` occurs once, a final path follows a second")
        return Verdict(False, "no solution found" if "No solution found" in text else "no goal reached")
    return replay(nums, target, path)


def claimed_ops(text: str) -> tuple[str, ...] | None:
    """The operations of the final path a text claims, right or wrong (every operation match
    of its `official_result` up to the first `Goal Reached` line); None when it has no final
    path or the path has no operation."""
    path = official_result(text) if isinstance(text, str) else None
    if path is None:
        return None
    return path_ops(path) or None


def path_ops(path: str) -> tuple[str, ...]:
    """The operations of a path as written (`a op b=c`), right or wrong: every operation match
    up to its first `Goal Reached` line."""
    ops = []
    for line in path.split("\n"):
        m = OP_RE.search(line)
        if m and len(m.group(0)) < 200:
            ops.append(f"{m.group(1)}{m.group(2)}{m.group(3)}={m.group(4)}")
        if GOAL_REACHED in line:
            break
    return tuple(ops)


def verify_record(rec: dict, path: str | None = None, line: int | None = None) -> dict:
    """`apr verify` on one JSON record: the record with `correct` and `reason` set. The text
    judged is `text` (our records), else `search_path` (published SFT records, whose root
    text it is). Bad fields are UserErrors naming `path` and `line`."""
    nums, target = rec.get("nums"), rec.get("target")
    text = rec.get("text", rec.get("search_path"))
    if not isinstance(nums, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in nums):
        raise UserError("`nums` must be a list of integers", path, line)
    if not isinstance(target, int) or isinstance(target, bool):
        raise UserError("`target` must be an integer", path, line)
    if not isinstance(text, str):
        raise UserError("`text` (or a published record's `search_path`) must be a string", path, line)
    v = check(nums, target, text)
    return {**rec, "correct": v.correct, "reason": v.reason}


# ---------------------------------------------------------------------------- reason classes

# The checker's verdicts by class: (reason prefix, class). Records written before the checker
# followed the published evaluation carry older reasons; those are classed by the last rows.
CHECKER_CLASSES = (
    ("correct", "correct"),
    ("no solution found", "no solution found"),
    ("no goal reached", "no goal reached"),
    ("no final path", "no final path"),
    ("operand not among the numbers", "operand not among the numbers"),
    ("wrong arithmetic", "wrong arithmetic"),
    ("malformed resulting numbers", "malformed resulting numbers"),
    ("resulting numbers do not match", "resulting numbers do not match"),
    ("final path ends off target", "final path ends off target"),
    ("final path has no `Goal Reached` line", "no final path"),
    ("checker error", "checker error"),
    # before: the goal-line checker's reasons
    ("operand of", "operand not among the numbers"),
    ("resulting numbers", "resulting numbers do not match"),
    ("goal line malformed", "no final path"),
    ("malformed", "malformed line in final path"),
    ("state ", "state line does not match"),
    ("goal ", "final path ends off target"),
    ("numbers left", "final path ends off target"),
    ("final path has no operations", "final path ends off target"),
)


def reason_class(reason: str) -> str | None:
    """The class of a checker verdict's reason; None when the checker did not write it."""
    for prefix, kind in CHECKER_CLASSES:
        if reason.startswith(prefix):
            return kind
    return None
