"""The join rules: what a finished child passes on to its parent at a join, by the name a user
gives (`--join-rule`, `RuntimeConfig.join_rule`):

- `official` (default): the published evaluation's reading of the child's whole text
  (`official_result`), byte for byte; a result not ending in a newline gets one, so
  `<End Sub Searches>` stays a line of its own.
- `goal-line`: the clean path the solvers write into demonstrations (`goal_line_result`).
- `verified`: the official result, passed on only when it replays (`checker.replay`) from the
  child's start state (the `Current State` of its prompt) to its target; a false claim is
  joined as a failed sub search and counted as rejected.

docs/evaluation.md has the rules with examples. The package does not import this module:
it uses the checker, which reads the language through the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from apr.checker import replay
from apr.protocol.parse import start_state
from apr.protocol.results import goal_line_result, official_result
from apr.protocol.tree import Thread


@dataclass(frozen=True)
class Passed:
    """What a child passes on: its path (None: joined as a failed sub search), and whether
    a success claim was rejected (`verified` only)."""

    path: str | None
    rejected: bool = False


def official_join(child: Thread) -> Passed:
    path = official_result(child.text())
    if path is not None and not path.endswith("\n"):
        path += "\n"
    return Passed(path)


def goal_line_join(child: Thread) -> Passed:
    return Passed(goal_line_result(child.text()))


def verified_join(child: Thread) -> Passed:
    claim = official_join(child)
    if claim.path is None:
        return claim
    start = start_state(child.prompt)
    if start is None or not replay(start.nums, start.target, claim.path).correct:
        return Passed(None, rejected=True)
    return claim


JOIN_RULES: dict[str, Callable[[Thread], Passed]] = {
    "official": official_join,
    "goal-line": goal_line_join,
    "verified": verified_join,
}
