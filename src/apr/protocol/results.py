"""What a thread's text gives as its result, under the two readings the join rules are named
after (`official`, `goal-line`), and what a join text passed on from each child.
"""

from __future__ import annotations

from apr.protocol.lines import GOAL_REACHED, JOIN_END, JOIN_START, MOVING_RE, TAG_RE
from apr.protocol.parse import is_goal_line


def official_result(text: str) -> str | None:
    """A thread's result as the published evaluation reads it: when `Goal Reached` occurs at
    least twice in the text (anywhere: goal lines, malformed goal lines and the join tags
    `<Goal Reached in Sub Search ...>` all count), the text after its second-to-last
    occurrence and the one character that follows it (normally the newline), to the end of
    the text; else None (no solution). It is the final path the checker replays, and what a
    child passes on at a join under the runtime's `official` rule."""
    last = text.rfind(GOAL_REACHED)
    if last < 0:
        return None
    prev = text.rfind(GOAL_REACHED, 0, last)
    if prev < 0:
        return None
    return text[prev + len(GOAL_REACHED) + 1:]


def goal_line_result(text: str) -> str | None:
    """A thread's clean success path as the solvers write it (the runtime's `goal-line` rule):
    the lines after its second-to-last well-formed goal line `X,X equal: Goal Reached`, up to
    and including its last one, starting with `Moving to Node`. None when it did not succeed."""
    lines = text.split("\n")
    goals = [i for i, line in enumerate(lines) if is_goal_line(line)]
    if len(goals) < 2:
        return None
    path = lines[goals[-2] + 1: goals[-1] + 1]
    if not path or not MOVING_RE.match(path[0]) or path[0].startswith(("Sub Call", "Token")):
        return None
    return "\n".join(path) + "\n"


def join_results(join: str, nodes: list[str]) -> list[str | None]:
    """What a join text passed on from each of its children (`nodes`: the children's nodes in
    child order): the path after a child's `<Goal Reached in Sub Search ...>` tag, None after
    a `<No Solution ...>` tag or when the child has no tag. Inverse of `join_text`."""
    body = join[len(JOIN_START):] if join.startswith(JOIN_START) else join
    if body.endswith(JOIN_END):
        body = body[: -len(JOIN_END)]
    out: list[str | None] = [None] * len(nodes)
    lines = body.split("\n")
    k, current, start = 0, None, 0
    pos = 0  # character offset of the current line in body
    spans: list[tuple[int, int, int]] = []  # (child, path start, path end) of success tags
    for line in lines:
        m = TAG_RE.match(line)
        if m and k < len(nodes) and m.group(4) == nodes[k]:
            if current is not None:
                spans.append((current, start, pos))
            current = k if m.group(1) == "Goal Reached" else None
            start = pos + len(line) + 1
            k += 1
        pos += len(line) + 1
    if current is not None:
        spans.append((current, start, len(body)))
    for child, a, b in spans:
        out[child] = body[a:b]
    return out
