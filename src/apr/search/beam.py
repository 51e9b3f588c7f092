"""The best-first beam search both solvers share: nodes, one expansion, clean paths, and the
search loop itself, with a `Branch` for what each solver does besides queueing nodes."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from dataclasses import dataclass
from typing import Callable

from apr import protocol as P
from apr.countdown import expand
from apr.errors import UserError
from apr.search.heuristics import Heuristic


@dataclass
class Node:
    id: str
    nums: list[int]
    ops: list[str]
    parent: "Node | None" = None
    op: str = ""  # the operation that made this node from its parent


@dataclass
class Expansion:
    text: str
    kept: list[Node]  # generated nodes (two or more numbers left), in printed order
    goal_op: str | None  # the operation that reached the target, if one did


# Solver config fields added after demonstration files were first written: left out of a
# record at their default (None), so that a file written without them reads as before, byte
# for byte (tests/golden).
LATER_FIELDS = ("max_result",)


def config_fields(cfg) -> dict:
    """A solver config's fields as a demonstration records them (LATER_FIELDS only when set)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if not (k in LATER_FIELDS and v is None)}


def check_max_result(max_result: int | None) -> None:
    """A cap on results is None (none) or a positive integer: 0 would leave out everything."""
    if max_result is not None and (isinstance(max_result, bool) or not isinstance(max_result, int) or max_result < 1):
        raise UserError(f"`max_result` must be an integer >= 1 (or none), got {max_result!r}", fields=("max_result",))


ORDERS = ("shuffled", "ranked", "hybrid")  # how an expansion prints the nodes it kept (see `expand_node`)


def expand_node(node: Node, target: int, beam: int, rng: random.Random, heuristic: Heuristic,
                order: str = "shuffled", max_result: int | None = None) -> Expansion:
    """Make every successor, keep the best `beam`, print them; stop at a goal.

    `max_result` (None: no limit) leaves out every operation whose result is larger: such
    operations are never written, kept or searched, as if they were not legal (issue 17: a
    small model gets most 4-digit products wrong, and a search that never writes them gives
    it nothing to get wrong; the problems whose every solution passes through one are lost).

    `order` "shuffled" prints the kept nodes in random order, as the published solvers do;
    "ranked" prints them best first. For the same beam the nodes kept, and the order a
    best-first search visits them, are the same either way: only the order they are written
    in, and so their ids, differ (a whole file's beams differ, since shuffling draws from the
    random stream). Ranked, a trace's next node is always the lowest-numbered open one, which a small
    model can follow; shuffled, it must rank the nodes by the heuristic again to find it
    (issue 17: the CPU line's models copy the wrong node's state, and repeat nodes).
    "hybrid" ranks an expansion whose successors keep two or more numbers (generated nodes)
    and shuffles one whose successors are single numbers (the goal tests of a node's last
    operations): ranked, a goal is always tested first, and a small model that misses it at
    once gives up instead of trying the other operations (session 4, `docs/reports/cpu_runs.md`)."""
    succ = [s for s in expand(node.nums) if max_result is None or s[1][-1] <= max_result]  # result last
    succ.sort(key=lambda s: heuristic(s[1], target))  # stable: ties keep generation order
    kept = succ[:beam]
    if order == "shuffled" or (order == "hybrid" and len(node.nums) <= 2):
        rng.shuffle(kept)
    lines, nodes = [], []
    for op, nums in kept:
        lines.append(P.explore_line(op, nums))
        if len(nums) == 1:
            lines.append(P.goal_line(nums[0], target))
            if nums[0] == target:
                return Expansion("".join(lines), nodes, op)
            continue
        child = Node(P.child_id(node.id, len(nodes)), nums, node.ops + [op], node, op)
        lines.append(P.generated_line(child.id, target, nums, op))
        nodes.append(child)
    return Expansion("".join(lines), nodes, None)


def path_to(start: Node, node: Node, target: int) -> str:
    """Clean-path lines from `start` down to (not including the lines of) `node`."""
    chain = []
    n = node
    while n is not start:
        if n is None:
            raise ValueError("node is not below start")
        chain.append(n)
        n = n.parent
    chain.reverse()
    lines, cur = [], start
    for nxt in chain:
        lines.append(P.moving_line(cur.id) + P.state_line(target, cur.nums, cur.ops))
        lines.append(P.explore_line(nxt.op, nxt.nums) + P.generated_line(nxt.id, target, nxt.nums, nxt.op))
        cur = nxt
    return "".join(lines)


def clean_path(start: Node, node: Node, goal_op: str, target: int) -> str:
    """The clean path from `start` to the goal reached from `node` by `goal_op`."""
    return (
        path_to(start, node, target)
        + P.moving_line(node.id)
        + P.state_line(target, node.nums, node.ops)
        + P.explore_line(goal_op, [target])
        + P.goal_line(target, target)
    )


class Frontier:
    """Open nodes, best heuristic first, ties in insertion order."""

    def __init__(self, heuristic: Heuristic, target: int):
        self._heap: list = []
        self._count = itertools.count()
        self._h, self._target = heuristic, target

    def push(self, node: Node) -> None:
        heapq.heappush(self._heap, (self._h(node.nums, self._target), next(self._count), node))

    def pop(self) -> Node:
        return heapq.heappop(self._heap)[2]

    def __bool__(self) -> bool:
        return bool(self._heap)


def root_node(nums: list[int]) -> Node:
    """Node #0: the problem's numbers, no operations yet."""
    return Node("0", list(nums), [])


@dataclass(frozen=True)
class Goal:
    """Where a search reached the target: `op` applied to `node` leaves [target]."""

    node: Node
    op: str


@dataclass(frozen=True)
class Branch:
    """What a solver may do with the nodes an expansion kept instead of queueing them:
    APR hands them to child threads, SoS+ runs a nested sub search from each.

    `wanted(kept)` is asked once after every expansion that reached no goal (it may draw from
    the search's random stream). When it says yes, `run(kept, beam)` searches below the kept
    nodes, writing to the same text parts as the search (`beam` is the expansion's beam), and
    the nodes are not queued; the Goal it returns, if any, ends the search.
    """

    wanted: Callable[[list[Node]], bool]
    run: Callable[[list[Node], int], "Goal | None"]


def beam_search(
    start: Node,
    target: int,
    beam_min: int,
    beam_max: int,
    heuristic: Heuristic,
    rng: random.Random,
    parts: list[str],
    branch: Branch,
    order: str = "shuffled",
    max_result: int | None = None,
) -> Goal | None:
    """Best-first beam search from `start`, appending its trace text to `parts`.

    The caller has written `start`'s `Moving to Node`/`Current State` lines (as a prompt or
    inline); every later node popped gets them here. Each node is expanded with a beam drawn
    uniformly from beam_min..beam_max and printed in `order`, leaving out results above
    `max_result` (`expand_node`). A goal ends the search with the clean path from
    `start`; otherwise `branch` (see `Branch`) or else the frontier takes the kept nodes. Returns
    the goal reached, or None when the frontier runs out (the caller writes any failure line).
    """
    frontier = Frontier(heuristic, target)
    frontier.push(start)
    first = True
    while frontier:
        node = frontier.pop()
        if not first:
            parts.append(P.moving_line(node.id) + P.state_line(target, node.nums, node.ops))
        first = False
        beam = rng.randint(beam_min, beam_max)
        ex = expand_node(node, target, beam, rng, heuristic, order, max_result)
        parts.append(ex.text)
        if ex.goal_op is not None:
            parts.append(clean_path(start, node, ex.goal_op, target))
            return Goal(node, ex.goal_op)
        if branch.wanted(ex.kept):
            goal = branch.run(ex.kept, beam)
            if goal is not None:
                return goal
            continue
        for child in ex.kept:
            frontier.push(child)
    return None
