"""Confidence intervals for evaluation accuracies (pure math: no torch, no transformers).

Exact match is a yes/no outcome per item, so an accuracy is a binomial proportion. The Wilson score
interval keeps its coverage near the nominal level for the small item counts and the 0 and 1
accuracies that compressed caches produce, where the normal (Wald) interval collapses to a point.
"""

from __future__ import annotations

import math


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
