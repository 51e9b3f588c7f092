"""The best-first beam search both solvers share: nodes, one expansion, clean paths."""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass

from apr import protocol as P
from apr.countdown import expand
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


def expand_node(node: Node, target: int, beam: int, rng: random.Random, heuristic: Heuristic) -> Expansion:
    """Make every successor, keep the best `beam`, shuffle, print; stop at a goal."""
    succ = list(expand(node.nums))
    succ.sort(key=lambda s: heuristic(s[1], target))  # stable: ties keep generation order
    kept = succ[:beam]
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


def root_node(nums: list[int], node_id: str = "0", ops: list[str] | None = None) -> Node:
    return Node(node_id, list(nums), list(ops or []))
