"""The lines of the trace language: builders, one per kind of line, and the patterns that read them.

Lines (each ends with "\\n"):
    Current State: 24:[4, 9, 3], Operations: []
    Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]
    Generated Node #0,1: 24:[4, 6] Operation: 9-3=6
    24,24 equal: Goal Reached
    8,24 unequal: No Solution
    Moving to Node #0,1
    No solution found.
A parent ends a segment with a spawn block (`spawn_block`); the runtime replaces the block
with join text (`join_text`) built from the children's results. docs/FORMATS.md describes
the language in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from apr.countdown import MAX_NUMBER_DIGITS

SPAWN_START = "<Calling Sub Searches>\n"
SPAWN_END = "<End Calling Sub Searches>"  # where a parent stops and the runtime takes over
JOIN_START = "<Sub Searches>\n"
JOIN_END = "<End Sub Searches>\n"
NO_SOLUTION = "No solution found.\n"
GOAL_REACHED = "Goal Reached"  # in goal lines and join tags alike: what the published evaluation counts


def fmt_list(nums: list[int]) -> str:
    return "[" + ", ".join(map(str, nums)) + "]"


def fmt_ops(ops: list[str]) -> str:
    return "[" + ", ".join(f"'{o}'" for o in ops) + "]"


def state_line(target: int, nums: list[int], ops: list[str]) -> str:
    return f"Current State: {target}:{fmt_list(nums)}, Operations: {fmt_ops(ops)}\n"


def explore_line(op: str, result: list[int]) -> str:
    return f"Exploring Operation: {op}, Resulting Numbers: {fmt_list(result)}\n"


def generated_line(node: str, target: int, nums: list[int], op: str) -> str:
    return f"Generated Node #{node}: {target}:{fmt_list(nums)} Operation: {op}\n"


def goal_line(value: int, target: int) -> str:
    if value == target:
        return f"{value},{target} equal: Goal Reached\n"
    return f"{value},{target} unequal: No Solution\n"


def moving_line(node: str) -> str:
    return f"Moving to Node #{node}\n"


def child_id(node: str, index: int) -> str:
    return f"{node},{index}"


def parent_id(node: str) -> str | None:
    return node.rsplit(",", 1)[0] if "," in node else None


def apr_prompt(target: int, nums: list[int], child_budget: int | None = None) -> str:
    """The root prompt of an APR thread, optionally conditioned on the child count."""
    prefix = f"Sub Call Budget: {child_budget} " if child_budget is not None else ""
    return prefix + moving_line("0") + state_line(target, nums, [])


def sos_prompt(target: int, nums: list[int], token_budget: int | None = None) -> str:
    prefix = f"Token Budget: {token_budget} " if token_budget is not None else ""
    return prefix + state_line(target, nums, [])


def child_prompt(node: str, target: int, nums: list[int], ops: list[str]) -> str:
    """A child sees nothing of its parent: only its node's state."""
    return moving_line(node) + state_line(target, nums, ops)


def solution_path(target: int, nums: list[int], ops: list[str], start: str = "0") -> str:
    """The clean path text for a list of operations (e.g. a problem's `solution`)."""
    lines, cur, node, done = [], list(nums), start, []
    for k, op in enumerate(ops):
        lhs, _, value = op.partition("=")
        m = re.match(r"^(\d+)([+\-*/])(\d+)$", lhs)
        if not m or not value.isdigit():
            raise ValueError(f"bad operation {op!r}")
        rest = list(cur)
        for x in (int(m.group(1)), int(m.group(3))):
            rest.remove(x)
        nxt = rest + [int(value)]
        lines.append(moving_line(node) + state_line(target, cur, done) + explore_line(op, nxt))
        if k == len(ops) - 1:
            lines.append(goal_line(nxt[0], target) if len(nxt) == 1 else "")
        else:
            node = child_id(node, 0)
            lines.append(generated_line(node, target, nxt, op))
        cur, done = nxt, done + [op]
    return "".join(lines)


@dataclass
class ChildRequest:
    """One child asked for in a spawn block."""

    index: int
    level: int
    node: str
    prompt: str | None  # None when the node is unknown (malformed parent text)


def spawn_block(requests: list[ChildRequest]) -> str:
    lines = [SPAWN_START]
    for r in requests:
        lines.append(f"<Start Sub Search {r.index} at level {r.level}> Moving to Node #{r.node}\n")
    lines.append(SPAWN_END + "\n")
    return "".join(lines)


@dataclass
class ChildResult:
    index: int
    level: int
    node: str
    path: str | None  # the child's clean success path, None when it failed


def join_text(results: list[ChildResult]) -> str:
    parts = [JOIN_START]
    for r in results:
        if r.path is None:
            parts.append(f"<No Solution in Sub Search {r.index} at level {r.level} at Node #{r.node}>\n")
        else:
            parts.append(f"<Goal Reached in Sub Search {r.index} at level {r.level} at Node #{r.node}>\n")
            parts.append(r.path)
    parts.append(JOIN_END)
    return "".join(parts)


# ---------------------------------------------------------------------------- patterns

_NUM = r"\d{1,%d}" % MAX_NUMBER_DIGITS
_NODE = r"\d+(?:,\d+)*"
GOAL_RE = re.compile(rf"^({_NUM}),({_NUM}) equal: Goal Reached$")
STATE_RE = re.compile(rf"^Current State: ({_NUM}):\[([\d, ]*)\], Operations: \[(.*)\]$")
EXPLORE_RE = re.compile(
    rf"^Exploring Operation: ({_NUM})([+\-*/])({_NUM})=({_NUM}), Resulting Numbers: \[([\d, ]*)\]$"
)
GENERATED_RE = re.compile(rf"^Generated Node #({_NODE}): ({_NUM}):\[([\d, ]*)\] Operation: (.*)$")
MOVING_RE = re.compile(rf"^(?:Sub Call Budget: \d+ |Token Budget: \d+ )?Moving to Node #({_NODE})$")
# Indices and levels past 9 digits are no spawn line (no model spawns that many), and
# bounding them keeps int() cheap and below Python's int-string limit on hostile text.
SPAWN_LINE_RE = re.compile(rf"^<Start Sub Search (\d{{1,9}}) at level (\d{{1,9}})> Moving to Node #({_NODE})$")
TAG_RE = re.compile(rf"^<(Goal Reached|No Solution) in Sub Search (\d+) at level (\d+) at Node #({_NODE})>$")
QUOTED_OP_RE = re.compile(r"'([^']*)'")  # one operation of a state line's `Operations: [...]`
