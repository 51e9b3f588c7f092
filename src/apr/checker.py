"""Decide whether a text solves a problem by replaying its final clean path.

The final path is the block that ends at the text's last goal line and starts at the last
`Moving to Node #0` line before it. Every `Exploring Operation` line in it is replayed from
the problem's numbers: both operands present, the arithmetic exact, the resulting list equal
as a multiset; the goal line must come with the list equal to [target]. Nothing is ever
evaluated as code, and no input string makes this raise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from apr.protocol import EXPLORE_RE, GOAL_RE, MOVING_RE, STATE_RE, is_goal_line, parse_list


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str
    path: tuple[str, ...] = ()  # the operations of the accepted path

    def __bool__(self) -> bool:
        return self.correct


def apply_op(a: int, op: str, b: int) -> int | None:
    """The result of a legal Countdown operation written as in traces, else None."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a >= b else None
    if op == "/":
        return a // b if b != 0 and a >= b and a % b == 0 else None
    return None


def final_path(text: str) -> list[str] | None:
    lines = text.split("\n")
    last_goal = max((i for i, line in enumerate(lines) if is_goal_line(line)), default=-1)
    if last_goal < 0:
        return None
    start = -1
    for i in range(last_goal, -1, -1):
        m = MOVING_RE.match(lines[i])
        if m and m.group(1) == "0":
            start = i
            break
    if start < 0:
        return None
    return lines[start: last_goal + 1]


def check(nums: list[int], target: int, text: str) -> Verdict:
    """Correct when the text's final clean path solves (nums, target)."""
    try:
        return _check(list(nums), int(target), text if isinstance(text, str) else "")
    except Exception as e:  # a checker bug must not take a batch down with it
        return Verdict(False, f"checker error: {type(e).__name__}")


def _check(nums: list[int], target: int, text: str) -> Verdict:
    path = final_path(text)
    if path is None:
        if "Goal Reached" in text and not any(is_goal_line(l) for l in text.split("\n")):
            return Verdict(False, "goal line malformed or number too long")
        return Verdict(False, "no goal reached" if "No solution found" not in text else "no solution found")
    state = Counter(nums)
    ops: list[str] = []
    last_result: list[int] | None = None
    for line in path[1:]:
        if line.startswith("Current State:"):
            m = STATE_RE.match(line)
            listed = parse_list(m.group(2)) if m else None
            if listed is None:
                return Verdict(False, "malformed or over-long state line in final path")
            if Counter(listed) != state or int(m.group(1)) != target:
                return Verdict(False, f"state {listed} does not match the replayed numbers")
        elif line.startswith("Exploring Operation:"):
            m = EXPLORE_RE.match(line)
            if not m:
                return Verdict(False, "malformed or over-long operation line in final path")
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            result = parse_list(m.group(5))
            if result is None:
                return Verdict(False, "malformed resulting numbers")
            need = Counter([a, b])
            if any(state[k] < v for k, v in need.items()):
                return Verdict(False, f"operand of {a}{op}{b} not among the numbers")
            value = apply_op(a, op, b)
            if value is None or value != c:
                return Verdict(False, f"wrong arithmetic: {a}{op}{b}={c}")
            state = state - need + Counter([c])
            if Counter(result) != state:
                return Verdict(False, f"resulting numbers {result} do not match")
            ops.append(f"{a}{op}{b}={c}")
            last_result = result
    m = GOAL_RE.match(path[-1])
    if not ops:
        return Verdict(False, "final path has no operations")
    if int(m.group(1)) != target:
        return Verdict(False, f"goal {m.group(1)} is not the target {target}")
    if last_result != [target] or state != Counter([target]):
        return Verdict(False, "numbers left do not equal [target]")
    return Verdict(True, "correct", tuple(ops))
