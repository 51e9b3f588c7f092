"""Seeds derived from a run's seed, so that each item (a problem, an epoch, a step) draws
from its own stream: results do not depend on worker count, batch makeup or order."""


def derive_seed(seed: int, index: int) -> int:
    """The seed of item `index` of a run seeded `seed`. Items of different runs get different
    seeds while `index` stays below the prime stride 1,000,003 (drawing a 500,000-problem split
    uses indices up to about 560,000)."""
    return seed * 1_000_003 + index
