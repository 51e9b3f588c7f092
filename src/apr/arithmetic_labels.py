"""Results of exact arithmetic (`--arithmetic exact`, apr.arithmetic) say so wherever they go.

Under the mode the engine keeps an `Exploring Operation` line's operands among the thread's
current numbers and writes its result, and the goal line after a single-number result (`N,T
equal: Goal Reached` / `N,T unequal: No Solution`): the accuracy of such a run measures the
search with the arithmetic taken out, an ablation, not the model. So every output made from one is
marked: records and thread trees (`arithmetic`, `forced_tokens`, `forced_spans`), the run
identity and summary of `apr eval` (`arithmetic: exact`, a label ending in `exact
arithmetic`), report rows and legends, RL report rows and the model card of a model trained
with exact rollouts. Default (unassisted) outputs carry no new key, so they stay as they were.

Forced tokens count like any other in total, sequential and per-thread tokens (they fill the
context), and are reported apart as well (`forced_tokens`).
"""

from __future__ import annotations

from apr.records import Record

EXACT = "exact"
LABEL = "exact arithmetic"


def is_exact(d: dict | None) -> bool:
    """Whether a summary, run.json or config section (a dict with `arithmetic`) is exact."""
    return isinstance(d, dict) and d.get("arithmetic") == EXACT


def identity(arithmetic: str | None) -> dict:
    """The keys a run's identity gets for the mode: none for the default, so run folders and
    checkpoints written before the mode existed resume as they were. `exact_goal_tests`: the
    engine writes goal tests too (since 2026-12-07); an exact folder written before then lacks
    it, so it is not resumed with records of the other kind."""
    return {"arithmetic": EXACT, "exact_goal_tests": True} if arithmetic == EXACT else {}


def labelled(label: str, arithmetic: str | None) -> str:
    """`label`, ending in `, exact arithmetic` for an exact run (unless it says so already)."""
    if arithmetic != EXACT or LABEL in label:
        return label
    return f"{label}, {LABEL}"


def forced_per_problem(groups: list[list[Record]]) -> list[int]:
    """Forced tokens per problem (its samples' summed, as total tokens are)."""
    return [sum(r.forced_tokens or 0 for r in g) for g in groups]
