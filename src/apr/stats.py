"""Statistics of evaluation results: intervals for an accuracy and for a paired change."""

from __future__ import annotations

import math

import numpy as np


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # Clamp so rounding never puts p outside its own interval (k = 0 or k = n).
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def paired_bootstrap(before: list[bool], after: list[bool], resamples: int = 10_000, seed: int = 0) -> dict:
    """Change in accuracy from `before` to `after` (outcomes of the same problems, in the same
    order) with a paired bootstrap 95% interval: problems are resampled with both outcomes
    kept together, so the interval reflects only disagreements between the two runs."""
    x = np.asarray(before, dtype=float)
    y = np.asarray(after, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    diffs = y[idx].mean(1) - x[idx].mean(1)
    return {"problems": len(x), "before": float(x.mean()), "after": float(y.mean()), "change": float(y.mean() - x.mean()),
            "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
            "gained": int(((x == 0) & (y == 1)).sum()), "lost": int(((x == 1) & (y == 0)).sum())}


def percentiles(values: list[float]) -> dict:
    """Mean and the 50th, 90th and 99th percentiles (zeros for no values)."""
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), **{f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)}}
