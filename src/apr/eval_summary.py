"""What a run's records say: accuracy with its Wilson 95% interval, cost percentiles, accuracy
within smaller context windows and cons@n / pass@n for n < N, i.e. `summary.json`. Derived
from records alone (apart from the evaluation that writes them, `apr.eval`), so the reports
and RL can read runs without running anything."""

from __future__ import annotations

import platform
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from apr import arithmetic_labels as exact
from apr import competence
from apr.checker import claimed_ops
from apr.records import Record
from apr.runtime import RUNTIME_FAILURES
from apr.stats import percentiles, wilson

METRICS = ("total_tokens", "sequential_tokens", "longest_thread", "children", "latency_s")
WINDOWS = (256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


def claimed_path(rec: Record) -> tuple[str, ...] | None:
    """The operations of the final path a sample claims, right or wrong; None when it claims
    none (no final path: fewer than two `Goal Reached`, `No solution found.`, cut off, ...)."""
    if rec.answer:
        return tuple(rec.answer)
    return claimed_ops(rec.text)


def consensus(samples: list[Record]) -> bool:
    """cons@n as published: drop samples with no solution, majority-vote the final paths.

    A sample votes with the path it claims (`claimed_path`) when the runtime did not stop it
    (a sample cut at the context window has no solution). The path with most votes wins,
    ties going to the path claimed first (lowest sample number); the problem counts as
    solved when the winning path is correct. Wrong claimed paths vote too, so cons@n can be
    below pass@n; no votes at all is a failure."""
    votes: Counter = Counter()
    first: dict[tuple, int] = {}
    right: dict[tuple, bool] = {}
    for s, rec in enumerate(samples):
        path = claimed_path(rec)
        if path is None or rec.reason.startswith(RUNTIME_FAILURES):
            continue
        votes[path] += 1
        first.setdefault(path, s)
        right[path] = right.get(path, False) or rec.correct
    if not votes:
        return False
    winner = max(votes, key=lambda p: (votes[p], -first[p]))
    return right[winner]


def solved(method: str, samples: list[Record]) -> bool:
    if method.startswith("cons@"):
        return consensus(samples)
    return any(r.correct for r in samples)  # pass@n, and the one-sample methods


def within(rec: Record, window: int) -> Record:
    """A record as it would be under a smaller context window: a thread longer than
    `window` tokens would have been cut, so the sample fails and claims nothing."""
    if rec.longest_thread <= window:
        return rec
    return rec.failed_as("context window reached")


def per_problem_cost(samples: list[Record]) -> dict:
    """Cost of answering one problem with these samples. Samples are independent, so they
    can run side by side: tokens and children add up; sequential tokens, the longest thread
    and latency are those of the slowest sample."""
    return {
        "total_tokens": sum(r.total_tokens for r in samples),
        "sequential_tokens": max(r.sequential_tokens for r in samples),
        "longest_thread": max(r.longest_thread for r in samples),
        "children": sum(r.children for r in samples),
        "latency_s": max(r.latency_s for r in samples),
    }


def point(method: str, groups: list[list[Record]]) -> dict:
    """Accuracy (with its interval) and mean costs for problems given as sample lists."""
    k = sum(solved(method, g) for g in groups)
    n = len(groups)
    costs = [per_problem_cost(g) for g in groups]
    out = {"accuracy": k / n if n else 0.0, "ci95": list(wilson(k, n)), "correct": k, "problems": n}
    for m in METRICS:
        out[m] = float(np.mean([c[m] for c in costs])) if costs else 0.0
    return out


def summarize(records: list[Record], meta: dict) -> dict:
    """summary.json from the records of one run folder (complete problems only)."""
    method, n = meta["method"], meta["samples"]
    by_problem: dict[int, list[Record]] = {}
    for r in records:
        by_problem.setdefault(r.index, []).append(r)
    groups = [sorted(g, key=lambda r: r.sample or 0) for _, g in sorted(by_problem.items())]
    groups = [g for g in groups if len(g) >= n]
    base = point(method, groups)
    done = [r for g in groups for r in g]
    costs = [per_problem_cost(g) for g in groups]
    top = meta["context"] if meta["context"] else max((r.longest_thread for r in records), default=0)
    windows = sorted({w for w in WINDOWS if w < top} | {top})
    out = {
        **{k: meta.get(k) for k in ("model", "label", "family", "method", "runtime_method", "samples", "temperature",
                                    "top_k", "top_p", "seed", "context", "child_budget", "token_budget", "join_rule",
                                    "problems_file")},
        **exact.identity(meta.get("arithmetic")),
        "accuracy": base["accuracy"],
        "ci95": base["ci95"],
        "correct": base["correct"],
        "problems": base["problems"],
        "metrics": {m: percentiles([c[m] for c in costs]) for m in METRICS},
        "accuracy_within_context": {str(w): point(method, [[within(r, w) for r in g] for g in groups]) for w in windows},
        "competence": competence.measure(done),
        "machine": machine(meta.get("device")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if exact.is_exact(meta):  # forced tokens apart (they are in the token counts too), and forced results
        out["metrics"]["forced_tokens"] = percentiles(exact.forced_per_problem(groups))
        out["competence"]["forced_results"] = competence.forced_results(done)
    if method[:5] in ("cons@", "pass@"):
        kind = method[:5]
        out["by_samples"] = {kind: {str(k): point(kind + str(k), [g[:k] for g in groups]) for k in range(1, n + 1)}}
        other = "pass@" if kind == "cons@" else "cons@"
        out["by_samples"][other] = {str(k): point(other + str(k), [g[:k] for g in groups]) for k in range(1, n + 1)}
    return out


def describe(summary: dict, out: str | Path | None = None) -> str:
    """The line `apr eval` prints: accuracy, costs, competence and where the summary is."""
    lo, hi = summary["ci95"]
    m = summary["metrics"]
    line = (f"{summary['label']}: accuracy {summary['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] on {summary['problems']} problems; "
            f"total tokens {m['total_tokens']['mean']:.0f}, sequential {m['sequential_tokens']['mean']:.0f}, "
            f"latency {m['latency_s']['mean']:.2f} s")
    if exact.is_exact(summary):  # before the error rate, which is near 0 by construction then
        line += (f"; {exact.LABEL}: {m['forced_tokens']['mean']:.0f} forced tokens, "
                 f"{summary['competence']['forced_results']} operation results written by the engine")
    if summary.get("competence"):
        line += "; " + competence.describe(summary["competence"])
    if summary.get("join_rule"):
        line += f" ({summary['join_rule']} joins)"
    return line + (f"; {out}/summary.json" if out is not None else "")


def machine(device: str | None = None) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "device": device or "cpu"}
    if device and device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    return info
