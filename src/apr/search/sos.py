"""SoS+: serial best-first beam search that sometimes "doubles down" with nested sub searches."""

from __future__ import annotations

import random
from dataclasses import dataclass

from apr import protocol as P
from apr.search.beam import Branch, Goal, Node, beam_search, check_max_result, clean_path, config_fields, root_node
from apr.search.heuristics import HEURISTICS


@dataclass
class SosConfig:
    beam_min: int = 1
    beam_max: int = 5  # beam size per expansion, uniform in beam_min..beam_max
    sub_search_prob: float = 0.5  # chance per expansion to run a sub search on each kept node
    max_sub_depth: int = 100  # nesting limit for sub searches (numbers run out first)
    heuristic: str = "mult"
    order: str = "shuffled"  # kept nodes printed shuffled (published), "ranked" best first, or "hybrid" (beam.expand_node)
    max_result: int | None = None  # leave out operations whose result is larger (None: none; beam.expand_node)

    def __post_init__(self) -> None:
        check_max_result(self.max_result)

    def params(self) -> dict:
        return {"solver": "sos", **config_fields(self)}


def serial_search(
    start: Node, target: int, level: int, cfg: SosConfig, rng: random.Random, parts: list[str]
) -> Goal | None:
    """Best-first search from `start`, whose `Moving`/`Current State` lines the caller wrote,
    appending its text to `parts`.

    After an expansion that kept nodes, a search at a level below `cfg.max_sub_depth`
    doubles down (with chance `sub_search_prob`): it runs a nested search from each kept node
    in turn, written inline between `Start Sub Search`/`Exit Sub Search` lines, and stops at
    the first that succeeds; when none does, it goes on with its frontier (those nodes are
    not queued).
    """

    def wanted(kept: list[Node]) -> bool:
        return bool(kept) and level < cfg.max_sub_depth and rng.random() < cfg.sub_search_prob

    def sub_searches(kept: list[Node], beam: int) -> Goal | None:
        sub_level = level + 1
        for child in kept:
            parts.append(f"Start Sub Search at level {sub_level}: " + P.moving_line(child.id))
            parts.append(P.state_line(target, child.nums, child.ops))
            goal = serial_search(child, target, sub_level, cfg, rng, parts)
            parts.append(f"Exit Sub Search at level {sub_level}\n")
            if goal is not None:
                parts.append(P.goal_line(target, target) + clean_path(start, goal.node, goal.op, target))
                return goal
            parts.append("No solution found in sub search\n")
        return None

    h = HEURISTICS[cfg.heuristic]
    return beam_search(start, target, cfg.beam_min, cfg.beam_max, h, rng, parts, Branch(wanted, sub_searches), cfg.order,
                       cfg.max_result)


def solve_sos(nums: list[int], target: int, cfg: SosConfig, rng: random.Random) -> P.Thread:
    """One SoS+ demonstration as a single-thread tree."""
    parts: list[str] = []
    goal = serial_search(root_node(nums), target, 0, cfg, rng, parts)
    if goal is None:
        parts.append(P.NO_SOLUTION)
    return P.Thread(P.sos_prompt(target, nums), ["".join(parts)])
