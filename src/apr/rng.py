"""Seeds derived from a run's seed, so that each item (a problem, an epoch, a step) draws
from its own stream: results do not depend on worker count, batch makeup or order."""


def derive_seed(seed: int, index: int) -> int:
    """The seed of item `index` of a run seeded `seed` (a prime stride keeps streams apart)."""
    return seed * 1_000_003 + index
