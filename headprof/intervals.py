"""Confidence intervals for evaluation accuracies (pure math: no torch, no transformers).

Exact match is a yes/no outcome per item, so an accuracy is a binomial proportion. The Wilson score
interval keeps its coverage near the nominal level for the small item counts and the 0 and 1
accuracies that compressed caches produce, where the normal (Wald) interval collapses to a point.
"""

from __future__ import annotations

import math
import random


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion `successes / n` (z = 1.96: 95%); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    values: list[float], draws: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement `draws` times, seeded:
    the same values give the same interval). For task scores in [0, 1] that are not yes/no (RULER's partial
    string match, F1), where the Wilson interval does not apply."""
    if not values:
        return 0.0, 1.0
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(draws))
    low = means[int((1 - level) / 2 * draws)]
    high = means[min(draws - 1, int((1 + level) / 2 * draws))]
    return low, high
