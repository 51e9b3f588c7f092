"""SoS+: serial best-first beam search that sometimes "doubles down" with nested sub searches."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from apr import protocol as P
from apr.search.beam import Frontier, Node, clean_path, expand_node, path_to, root_node
from apr.search.heuristics import HEURISTICS


@dataclass
class SosConfig:
    beam_min: int = 1
    beam_max: int = 5  # beam size per expansion, uniform in beam_min..beam_max
    sub_search_prob: float = 0.5  # chance per expansion to run a sub search on each kept node
    max_sub_depth: int = 100  # nesting limit for sub searches (numbers run out first)
    heuristic: str = "mult"

    def params(self) -> dict:
        return {"solver": "sos", **asdict(self)}


@dataclass
class SearchResult:
    text: str  # generated text after the caller-written start lines
    goal: tuple[Node, str] | None  # (node, goal operation) when solved


def serial_search(start: Node, target: int, level: int, cfg: SosConfig, rng: random.Random) -> SearchResult:
    """Best-first search from `start`, whose `Moving`/`Current State` lines the caller wrote."""
    h = HEURISTICS[cfg.heuristic]
    frontier = Frontier(h, target)
    frontier.push(start)
    parts: list[str] = []
    first = True
    while frontier:
        node = frontier.pop()
        if not first:
            parts.append(P.moving_line(node.id) + P.state_line(target, node.nums, node.ops))
        first = False
        ex = expand_node(node, target, rng.randint(cfg.beam_min, cfg.beam_max), rng, h)
        parts.append(ex.text)
        if ex.goal_op is not None:
            parts.append(clean_path(start, node, ex.goal_op, target))
            return SearchResult("".join(parts), (node, ex.goal_op))
        if ex.kept and level < cfg.max_sub_depth and rng.random() < cfg.sub_search_prob:
            for child in ex.kept:
                sub_level = level + 1
                parts.append(f"Start Sub Search at level {sub_level}: " + P.moving_line(child.id))
                parts.append(P.state_line(target, child.nums, child.ops))
                sub = serial_search(child, target, sub_level, cfg, rng)
                parts.append(sub.text)
                parts.append(f"Exit Sub Search at level {sub_level}\n")
                if sub.goal is not None:
                    node_, op = sub.goal
                    parts.append(P.goal_line(target, target) + clean_path(start, node_, op, target))
                    return SearchResult("".join(parts), sub.goal)
                parts.append("No solution found in sub search\n")
        else:
            for child in ex.kept:
                frontier.push(child)
    return SearchResult("".join(parts), None)


def solve_sos(nums: list[int], target: int, cfg: SosConfig, rng: random.Random) -> P.Thread:
    """One SoS+ demonstration as a single-thread tree."""
    start = root_node(nums)
    result = serial_search(start, target, 0, cfg, rng)
    text = result.text + ("" if result.goal else P.NO_SOLUTION)
    return P.Thread(P.sos_prompt(target, nums), [text])


__all__ = ["SosConfig", "solve_sos", "serial_search", "path_to"]
