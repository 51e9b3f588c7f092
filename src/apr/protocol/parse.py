"""Reading trace text: numbers, node states, a parent's spawn block, a thread's start state.

No input string makes these raise: text that does not parse gives None (or an empty list).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

from apr.countdown import MAX_NUMBER_DIGITS
from apr.protocol.lines import (
    GENERATED_RE, GOAL_RE, MOVING_RE, QUOTED_OP_RE, SPAWN_END, SPAWN_LINE_RE, SPAWN_START, STATE_RE, ChildRequest,
    child_prompt, parent_id,
)


def parse_list(text: str, max_digits: int = MAX_NUMBER_DIGITS) -> list[int] | None:
    """`4, 9, 3` -> [4, 9, 3]; None when it is not a list of integers of at most
    `max_digits` digits (decimal digits only: int() accepts nothing else)."""
    text = text.strip()
    if not text:
        return []
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdecimal() or len(part) > max_digits:
            return None
        out.append(int(part))
    return out


def is_goal_line(line: str) -> bool:
    m = GOAL_RE.match(line)
    return bool(m) and m.group(1) == m.group(2)


@dataclass
class NodeState:
    target: int
    nums: list[int]
    ops: list[str]


def _state(line: str) -> NodeState | None:
    """A `Current State` line as a node state."""
    s = STATE_RE.match(line)
    nums = parse_list(s.group(2)) if s else None
    return NodeState(int(s.group(1)), nums, QUOTED_OP_RE.findall(s.group(3))) if nums is not None else None


def _fix_states(lines: list[str], states: dict[str, NodeState]) -> Iterator[tuple[int, str]]:
    """Walk `lines`, yielding (index, line) before each line is read into `states`: the nodes
    the lines before it fixed (see `node_states`)."""
    for i, line in enumerate(lines):
        yield i, line
        m = MOVING_RE.match(line)
        if m and i + 1 < len(lines) and m.group(1) not in states:
            s = _state(lines[i + 1])
            if s is not None:
                states[m.group(1)] = s
            continue
        g = GENERATED_RE.match(line)
        if g:
            node, nums = g.group(1), parse_list(g.group(3))
            parent = states.get(parent_id(node) or "")
            if parent is not None and nums is not None and node not in states:
                states[node] = NodeState(int(g.group(2)), nums, parent.ops + [g.group(4)])


def node_states(text: str) -> dict[str, NodeState]:
    """Every node whose state the text fixes: the start node (`Moving to Node` + `Current State`)
    and each `Generated Node`, its operations accumulated from its parent's."""
    states: dict[str, NodeState] = {}
    for _ in _fix_states(text.split("\n"), states):
        pass
    return states


@dataclass
class Move:
    """A `Moving to Node #node` line of a text, to a node the text generated before it."""

    at: int  # offset of the line in the text
    node: str
    named: NodeState  # the node's state as generated
    written: NodeState | None  # the state the next line writes (None: it does not parse)
    generated: dict[str, NodeState]  # every node the text generated before the line, the named one included


def node_moves(text: str) -> list[Move]:
    """The moves of a text to nodes it generated (`Generated Node #X` before `Moving to Node
    #X`). A text that starts at its `Current State` line (a SoS+ trace) starts at node 0."""
    if not MOVING_RE.match(text.split("\n", 1)[0]):
        root = "Moving to Node #0\n"
        return [dataclasses.replace(m, at=m.at - len(root)) for m in node_moves(root + text)]
    out, at, generated = [], 0, set()
    states: dict[str, NodeState] = {}
    lines = text.split("\n")
    for i, line in _fix_states(lines, states):  # one pass: states as of the lines before each
        g = GENERATED_RE.match(line)
        if g:
            generated.add(g.group(1))
        m = MOVING_RE.match(line)
        if m and m.group(1) in generated and m.group(1) in states:
            written = _state(lines[i + 1]) if i + 1 < len(lines) else None
            made = {n: st for n, st in states.items() if n in generated}
            out.append(Move(at, m.group(1), states[m.group(1)], written, made))
        at += len(line) + 1
    return out


def spawn_start(text: str) -> int:
    """Index where the final spawn block starts (what a join removes), -1 if none."""
    return text.rfind(SPAWN_START)


def parse_spawn(text: str) -> list[ChildRequest] | None:
    """The children asked for by the spawn block that ends `text`, or None if it ends in none.

    Each child's prompt is rebuilt from the parent's `Generated Node` lines; a child naming a
    node the text never generated gets `prompt=None`.
    """
    end = text.rstrip("\n")
    if not end.endswith(SPAWN_END):
        return None
    start = spawn_start(text)
    if start < 0:
        return None
    block = text[start + len(SPAWN_START):].rstrip("\n")
    lines = block.split("\n")[:-1]  # drop the end tag
    states = node_states(text[:start])
    requests = []
    for line in lines:
        m = SPAWN_LINE_RE.match(line)
        if not m:
            return []  # a garbled block asks for nothing well formed
        node = m.group(3)
        st = states.get(node)
        prompt = child_prompt(node, st.target, st.nums, st.ops) if st else None
        requests.append(ChildRequest(int(m.group(1)), int(m.group(2)), node, prompt))
    return requests


def start_state(prompt: str) -> NodeState | None:
    """The state a thread starts from: the first `Current State` line of its prompt."""
    for line in prompt.split("\n"):
        if line.startswith("Current State:"):
            return _state(line)
    return None


def split_prompt(text: str) -> tuple[str, str]:
    """Split a thread's first call into (prompt, generated): the prompt is everything through
    the first `Current State` line."""
    i = text.find("Current State:")
    if i < 0:
        return "", text
    j = text.find("\n", i)
    j = len(text) if j < 0 else j + 1
    return text[:j], text[j:]
