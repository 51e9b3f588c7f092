"""Solver traces of the packaged validation problems, and an engine that replays them.

The traces are those of the symbolic solvers, seeded by problem index, so a test that runs
them through the runtime or `apr eval` knows every text and answer it should get back."""

from __future__ import annotations

import random

from apr import protocol
from apr.countdown import read_problems
from apr.datasets import packaged_validation_set
from apr.engine.scripted import ScriptedEngine, script_from_thread
from apr.search import AprConfig, SosConfig, solve_apr, solve_sos


def solver_traces(n: int, method: str = "apr", cfg: AprConfig | SosConfig | None = None) -> list[protocol.Thread]:
    """The `method` solver's thread tree for each of the first n packaged validation problems,
    problem i solved with random.Random(i); `cfg` defaults to the solver's published one."""
    out = []
    for i, p in enumerate(read_problems(packaged_validation_set())[:n]):
        rng = random.Random(i)
        if method == "apr":
            out.append(solve_apr(p.nums, p.target, cfg or AprConfig(), rng)[0])
        else:
            out.append(solve_sos(p.nums, p.target, cfg or SosConfig(), rng))
    return out


def script_of(threads: list[protocol.Thread]) -> dict[str, str]:
    """Prompt -> completion for every thread of these trees (what ScriptedEngine replays)."""
    script: dict[str, str] = {}
    for t in threads:
        script_from_thread(t, script)
    return script


def scripted_engine(tok, threads: list[protocol.Thread], **kw) -> ScriptedEngine:
    """An engine that answers every thread of these trees as the solver wrote it."""
    return ScriptedEngine(tok, script_of(threads), **kw)
