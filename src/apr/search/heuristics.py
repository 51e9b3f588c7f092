"""Scores of a list of numbers against a target: lower is better."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

Heuristic = Callable[[list[int], int], float]


@lru_cache(maxsize=4096)
def _factors(target: int) -> tuple[int, ...]:
    return tuple(f for f in range(2, target + 1) if target % f == 0)


@lru_cache(maxsize=1 << 18)
def _factor_distance(n: int, target: int) -> int:
    factors = _factors(target)
    if not factors:  # targets 0 and 1 have no factor >= 2
        return abs(n - target)
    return min(abs(n - f) for f in factors)


def mult_heuristic(nums: list[int], target: int) -> float:
    """The published heuristic: for each number, its distance to the nearest factor >= 2 of
    the target, summed."""
    return sum(_factor_distance(n, target) for n in nums)


def sum_heuristic(nums: list[int], target: int) -> float:
    """A simpler alternative: mean distance of the numbers to the target."""
    return sum(abs(n - target) for n in nums) / len(nums)


HEURISTICS: dict[str, Heuristic] = {"mult": mult_heuristic, "sum": sum_heuristic}
