"""APR: the parent runs the beam search and hands kept nodes to child threads (spawn/join)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from apr import protocol as P
from apr.search.beam import Frontier, Node, clean_path, expand_node, path_to, root_node
from apr.search.heuristics import HEURISTICS


@dataclass
class AprConfig:
    beam_min: int = 1
    beam_max: int = 10  # parent beam per expansion, uniform in beam_min..beam_max
    child_beam_max: int = 15  # a child's beam is uniform in parent_beam..child_beam_max
    spawn_prob: float = 0.9  # chance to spawn when an expansion kept more than one node
    max_depth: int = 1  # levels of spawning: 1 = only the root spawns (the published data)
    heuristic: str = "mult"
    sub_call_budget: bool = False  # prefix the root prompt with `Sub Call Budget: N `

    def params(self) -> dict:
        return {"solver": "apr", **asdict(self)}


def run_thread(
    start: Node, target: int, level: int, beam_min: int, beam_max: int, cfg: AprConfig, rng: random.Random
) -> tuple[P.Thread, bool]:
    """Search from `start` as one thread whose prompt is the start node's lines."""
    h = HEURISTICS[cfg.heuristic]
    thread = P.Thread(P.child_prompt(start.id, target, start.nums, start.ops))
    frontier = Frontier(h, target)
    frontier.push(start)
    parts: list[str] = []
    first = True
    while frontier:
        node = frontier.pop()
        if not first:
            parts.append(P.moving_line(node.id) + P.state_line(target, node.nums, node.ops))
        first = False
        beam = rng.randint(beam_min, beam_max)
        ex = expand_node(node, target, beam, rng, h)
        parts.append(ex.text)
        if ex.goal_op is not None:
            parts.append(clean_path(start, node, ex.goal_op, target))
            thread.segments.append("".join(parts))
            return thread, True
        spawn = len(ex.kept) > 1 and level < cfg.max_depth and rng.random() < cfg.spawn_prob
        if not spawn:
            for child in ex.kept:
                frontier.push(child)
            continue
        requests = [P.ChildRequest(i, level + 1, c.id, None) for i, c in enumerate(ex.kept)]
        parts.append(P.spawn_block(requests))
        thread.segments.append("".join(parts))
        parts = []
        children, results = [], []
        for req, node_ in zip(requests, ex.kept):
            child, _ = run_thread(node_, target, level + 1, beam, max(beam, cfg.child_beam_max), cfg, rng)
            children.append(child)
            results.append(P.ChildResult(req.index, req.level, req.node, P.child_result(child.text())))
        thread.children.append(children)
        thread.joins.append(P.join_text(results))
        winner = next((i for i, r in enumerate(results) if r.path is not None), None)
        if winner is not None:
            parts.append(P.goal_line(target, target) + path_to(start, ex.kept[winner], target) + results[winner].path)
            thread.segments.append("".join(parts))
            return thread, True
    parts.append(P.NO_SOLUTION)
    thread.segments.append("".join(parts))
    return thread, False


def solve_apr(nums: list[int], target: int, cfg: AprConfig, rng: random.Random) -> tuple[P.Thread, bool]:
    """One APR demonstration: the root thread and its children."""
    root, solved = run_thread(root_node(nums), target, 0, cfg.beam_min, cfg.beam_max, cfg, rng)
    if cfg.sub_call_budget:
        root.prompt = f"Sub Call Budget: {root.count_descendants()} " + root.prompt
    return root, solved
