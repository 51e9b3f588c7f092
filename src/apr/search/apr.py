"""APR: the parent runs the beam search and hands kept nodes to child threads (spawn/join)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from apr import protocol as P
from apr.search.beam import Branch, Goal, Node, beam_search, check_max_result, config_fields, path_to, root_node
from apr.search.heuristics import HEURISTICS


@dataclass
class AprConfig:
    beam_min: int = 1
    beam_max: int = 10  # parent beam per expansion, uniform in beam_min..beam_max
    child_beam_max: int = 15  # a child's beam is uniform in parent_beam..child_beam_max
    spawn_prob: float = 0.9  # chance to spawn when an expansion kept more than one node
    max_depth: int = 1  # levels of spawning: 1 = only the root spawns (the published data)
    heuristic: str = "mult"
    order: str = "shuffled"  # kept nodes printed shuffled (published), "ranked" best first, or "hybrid" (beam.expand_node)
    max_result: int | None = None  # leave out operations whose result is larger (None: none; beam.expand_node)
    budget_prefix: bool = False  # prefix the root prompt with its child count, `Sub Call Budget: N `
    # At most this many child threads in a trace (None: no limit), as a model asked for
    # `Sub Call Budget: N` should: an expansion spawns only when all its kept nodes fit in
    # what is left, else they are queued as in a serial search.
    child_budget: int | None = None

    def __post_init__(self) -> None:
        check_max_result(self.max_result)

    def params(self) -> dict:
        return {"solver": "apr", **config_fields(self)}


@dataclass
class ChildBudget:
    """Child threads a trace may still start (`left` None: no limit), shared by its threads."""

    left: int | None

    def fits(self, n: int) -> bool:
        return self.left is None or n <= self.left

    def spend(self, n: int) -> None:
        if self.left is not None:
            self.left -= n


def run_thread(
    start: Node, target: int, level: int, beam_min: int, beam_max: int, cfg: AprConfig, rng: random.Random,
    budget: ChildBudget | None = None,
) -> tuple[P.Thread, Goal | None]:
    """Search from `start` as one thread whose prompt is the start node's lines.

    At an expansion that kept two or more nodes, a thread at a level below `cfg.max_depth`
    spawns (with chance `spawn_prob`, when the kept nodes fit in `budget`, the child threads
    the whole trace may still start): its segment ends with a spawn block, each kept node is
    searched by a child thread, and the parent continues after the join: with the first
    successful child's clean path if there is one, else with its frontier (the spawned nodes
    are not queued).
    """
    thread = P.Thread(P.child_prompt(start.id, target, start.nums, start.ops))
    parts: list[str] = []
    if budget is None:  # the root: the trace's budget starts here
        budget = ChildBudget(cfg.child_budget)

    def wanted(kept: list[Node]) -> bool:
        return len(kept) > 1 and level < cfg.max_depth and rng.random() < cfg.spawn_prob and budget.fits(len(kept))

    def spawn(kept: list[Node], beam: int) -> Goal | None:
        budget.spend(len(kept))
        requests = [P.ChildRequest(i, level + 1, c.id, None) for i, c in enumerate(kept)]
        parts.append(P.spawn_block(requests))
        thread.segments.append("".join(parts))
        parts.clear()
        children, results, goals = [], [], []
        for req, node in zip(requests, kept):
            child, goal = run_thread(node, target, level + 1, beam, max(beam, cfg.child_beam_max), cfg, rng, budget)
            children.append(child)
            goals.append(goal)
            results.append(P.ChildResult(req.index, req.level, req.node, P.goal_line_result(child.text())))
        thread.children.append(children)
        thread.joins.append(P.join_text(results))
        # The parent reads its children's results as the runtime gives them: from their text.
        winner = next((i for i, r in enumerate(results) if r.path is not None), None)
        if winner is None:
            return None
        parts.append(P.goal_line(target, target) + path_to(start, kept[winner], target) + results[winner].path)
        return goals[winner]

    h = HEURISTICS[cfg.heuristic]
    goal = beam_search(start, target, beam_min, beam_max, h, rng, parts, Branch(wanted, spawn), cfg.order, cfg.max_result)
    if goal is None:
        parts.append(P.NO_SOLUTION)
    thread.segments.append("".join(parts))
    return thread, goal


def solve_apr(nums: list[int], target: int, cfg: AprConfig, rng: random.Random) -> tuple[P.Thread, bool]:
    """One APR demonstration: the root thread and its children."""
    root, goal = run_thread(root_node(nums), target, 0, cfg.beam_min, cfg.beam_max, cfg, rng)
    if cfg.budget_prefix:
        root.prompt = f"Sub Call Budget: {root.count_descendants()} " + root.prompt
    return root, goal is not None
