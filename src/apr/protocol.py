"""The published trace language: one module for the solvers, the data, the runtime and the checker.

Lines (each ends with "\\n"):
    Current State: 24:[4, 9, 3], Operations: []
    Exploring Operation: 9-3=6, Resulting Numbers: [4, 6]
    Generated Node #0,1: 24:[4, 6] Operation: 9-3=6
    24,24 equal: Goal Reached
    8,24 unequal: No Solution
    Moving to Node #0,1
    No solution found.
A parent ends a segment with a spawn block; the runtime replaces the block with join text
built from the children's results. docs/FORMATS.md describes the language in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from apr.countdown import MAX_NUMBER_DIGITS

# ---------------------------------------------------------------------------- line builders

SPAWN_START = "<Calling Sub Searches>\n"
SPAWN_END = "<End Calling Sub Searches>"  # where a parent stops and the runtime takes over
JOIN_START = "<Sub Searches>\n"
JOIN_END = "<End Sub Searches>\n"
NO_SOLUTION = "No solution found.\n"


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


def apr_prompt(target: int, nums: list[int], sub_call_budget: int | None = None) -> str:
    """The root prompt of an APR thread, optionally conditioned on the child count."""
    prefix = f"Sub Call Budget: {sub_call_budget} " if sub_call_budget is not None else ""
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


# ---------------------------------------------------------------------------- parsers

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
_OP_RE = re.compile(r"'([^']*)'")


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


def node_states(text: str) -> dict[str, NodeState]:
    """Every node whose state the text fixes: the start node (`Moving to Node` + `Current State`)
    and each `Generated Node`, its operations accumulated from its parent's."""
    states: dict[str, NodeState] = {}
    lines = text.split("\n")
    for i, line in enumerate(lines):
        m = MOVING_RE.match(line)
        if m and i + 1 < len(lines) and m.group(1) not in states:
            s = STATE_RE.match(lines[i + 1])
            nums = parse_list(s.group(2)) if s else None
            if s and nums is not None:
                states[m.group(1)] = NodeState(int(s.group(1)), nums, _OP_RE.findall(s.group(3)))
            continue
        g = GENERATED_RE.match(line)
        if g:
            node, nums = g.group(1), parse_list(g.group(3))
            parent = states.get(parent_id(node) or "")
            if parent is not None and nums is not None and node not in states:
                states[node] = NodeState(int(g.group(2)), nums, parent.ops + [g.group(4)])
    return states


def parse_spawn(text: str) -> list[ChildRequest] | None:
    """The children asked for by the spawn block that ends `text`, or None if it ends in none.

    Each child's prompt is rebuilt from the parent's `Generated Node` lines; a child naming a
    node the text never generated gets `prompt=None`.
    """
    end = text.rstrip("\n")
    if not end.endswith(SPAWN_END):
        return None
    start = text.rfind(SPAWN_START)
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


def spawn_start(text: str) -> int:
    """Index where the final spawn block starts (what a join removes), -1 if none."""
    return text.rfind(SPAWN_START)


def child_result(text: str) -> str | None:
    """A child's clean success path as the solvers write it (the runtime's `goal-line` join
    rule): the lines after its second-to-last well-formed goal line `X,X equal: Goal Reached`,
    up to and including its last one, starting with `Moving to Node`. None when it did not
    succeed. The published evaluation reads model text by `thread_result` instead."""
    lines = text.split("\n")
    goals = [i for i, line in enumerate(lines) if is_goal_line(line)]
    if len(goals) < 2:
        return None
    path = lines[goals[-2] + 1: goals[-1] + 1]
    if not path or not MOVING_RE.match(path[0]) or path[0].startswith(("Sub Call", "Token")):
        return None
    return "\n".join(path) + "\n"


GOAL_REACHED = "Goal Reached"


def thread_result(text: str) -> str | None:
    """A thread's result as the published evaluation reads it: when `Goal Reached` occurs at
    least twice in the text (anywhere: goal lines, malformed goal lines and the join tags
    `<Goal Reached in Sub Search ...>` all count), the text after its second-to-last
    occurrence and the one character that follows it (normally the newline), to the end of
    the text; else None (no solution). It decides what a child passes to its parent at a
    join (the runtime's `official` join rule) and which final path the checker replays."""
    last = text.rfind(GOAL_REACHED)
    if last < 0:
        return None
    prev = text.rfind(GOAL_REACHED, 0, last)
    if prev < 0:
        return None
    return text[prev + len(GOAL_REACHED) + 1:]


def start_state(prompt: str) -> NodeState | None:
    """The state a thread starts from: the first `Current State` line of its prompt."""
    for line in prompt.split("\n"):
        if line.startswith("Current State:"):
            s = STATE_RE.match(line)
            nums = parse_list(s.group(2)) if s else None
            return NodeState(int(s.group(1)), nums, _OP_RE.findall(s.group(3))) if nums is not None else None
    return None


TAG_RE = re.compile(rf"^<(Goal Reached|No Solution) in Sub Search (\d+) at level (\d+) at Node #({_NODE})>$")


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


# ---------------------------------------------------------------------------- thread trees

@dataclass
class Thread:
    """One thread of a search: its given prompt, the text it generated in segments, and the
    children each segment's spawn block started. Segment i (but the last) ends with a spawn
    block; `joins[i]` is the join text that replaced it."""

    prompt: str
    segments: list[str] = field(default_factory=list)
    children: list[list["Thread"]] = field(default_factory=list)
    joins: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The thread's final text: prompt, segments with spawn blocks replaced by joins."""
        parts = [self.prompt]
        for i, seg in enumerate(self.segments):
            if i < len(self.joins):
                parts.append(seg[: spawn_start(seg)] if spawn_start(seg) >= 0 else seg)
                parts.append(self.joins[i])
            else:
                parts.append(seg)
        return "".join(parts)

    def calls(self) -> list[str]:
        """The context of each segment as a whole string (published `main_calls`)."""
        out, prefix = [], self.prompt
        for i, seg in enumerate(self.segments):
            out.append(prefix + seg)
            if i < len(self.joins):
                cut = spawn_start(seg)
                prefix += (seg[:cut] if cut >= 0 else seg) + self.joins[i]
        return out

    def walk(self):
        yield self
        for group in self.children:
            for c in group:
                yield from c.walk()

    def count_descendants(self) -> int:
        return sum(1 for _ in self.walk()) - 1

    def to_trace_dict(self) -> dict:
        return {
            "main_calls": self.calls(),
            "sub_calls": [[c.to_trace_dict() for c in group] for group in self.children],
        }


@dataclass
class TrainingString:
    text: str
    prompt_end: int  # text[:prompt_end] is the thread's given prompt
    inserted: list[tuple[int, int]]  # char spans the runtime inserted (join results)
    new_from: int  # text[:new_from] was already part of an earlier segment of this thread


def training_strings(thread: Thread) -> list[TrainingString]:
    """One training string per thread segment, depth first: the parent's segments, then each
    child's. Join text is marked so training can mask it."""
    out: list[TrainingString] = []
    prefix, inserted = thread.prompt, []
    for i, seg in enumerate(thread.segments):
        out.append(TrainingString(prefix + seg, len(thread.prompt), list(inserted), len(prefix)))
        if i < len(thread.joins):
            cut = spawn_start(seg)
            prefix += seg[:cut] if cut >= 0 else seg
            inserted.append((len(prefix), len(prefix) + len(thread.joins[i])))
            prefix += thread.joins[i]
    for group in thread.children:
        for c in group:
            out.extend(training_strings(c))
    return out


def split_prompt(text: str) -> tuple[str, str]:
    """Split a thread's first call into (prompt, generated): the prompt is everything through
    the first `Current State` line."""
    i = text.find("Current State:")
    if i < 0:
        return "", text
    j = text.find("\n", i)
    j = len(text) if j < 0 else j + 1
    return text[:j], text[j:]


def thread_from_trace_dict(td: dict | str) -> Thread:
    """Rebuild a thread tree from a (published or ours) `trace_dict`.

    `main_calls[i]` is the whole context of segment i; the join text between calls is taken
    from the data itself so the rebuilt tree renders the record byte for byte.
    """
    if isinstance(td, str):
        td = {"main_calls": [td], "sub_calls": []}
    if not isinstance(td, dict):
        raise ValueError("trace_dict must be an object")
    calls = td.get("main_calls")
    subs = td.get("sub_calls") or []
    if not isinstance(calls, list) or not calls or not all(isinstance(c, str) for c in calls):
        raise ValueError("`main_calls` must be a non-empty list of strings")
    if not isinstance(subs, list):
        raise ValueError("`sub_calls` must be a list")
    prompt, first = split_prompt(calls[0])
    thread = Thread(prompt, [first])
    prev = calls[0]
    for k, call in enumerate(calls[1:]):
        cut = spawn_start(prev)
        if cut < 0:
            raise ValueError(f"main_calls[{k}] does not end in a spawn block")
        kept = prev[:cut]
        if not call.startswith(kept):
            raise ValueError(f"main_calls[{k + 1}] does not continue main_calls[{k}]")
        end = call.find(JOIN_END, cut)
        if end < 0:
            raise ValueError(f"main_calls[{k + 1}] has no join text")
        end += len(JOIN_END)
        thread.joins.append(call[cut:end])
        thread.segments.append(call[end:])
        prev = call
    for group in subs:
        if not isinstance(group, list):
            raise ValueError("each `sub_calls` entry must be a list")
        thread.children.append([thread_from_trace_dict(c) for c in group])
    while len(thread.children) < len(thread.joins):
        thread.children.append([])
    return thread


def thread_from_record(record: dict) -> Thread:
    """A demonstration record (ours or a published SFT record) as a thread tree."""
    td = record.get("trace_dict")
    if td is None:
        path = record.get("search_path")
        if not isinstance(path, str):
            raise ValueError("record has neither `trace_dict` nor `search_path`")
        return thread_from_trace_dict(path)
    return thread_from_trace_dict(td)
