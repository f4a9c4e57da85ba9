"""Confidence intervals for evaluation accuracies (pure math: no torch, no transformers).

Exact match is a yes/no outcome per item, so an accuracy is a binomial proportion. The Wilson score
interval keeps its coverage near the nominal level for the small item counts and the 0 and 1
accuracies that compressed caches produce, where the normal (Wald) interval collapses to a point;
but it assumes independent items. Probe items are not: one needle at several lengths and depths is
several items with nearly one outcome. `cluster_bootstrap` resamples whole needles instead, and
`paired_difference` compares two methods item by item on the same needles; `permutation_p_value`
tests the ablation's top heads against random head sets.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


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


# ---------------------------------------------------------------- clustered items

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean over items with its cluster-bootstrap interval, and how many items and clusters it rests on."""

    value: float
    low: float
    high: float
    n: int
    clusters: int

    def to_dict(self, digits: int = 4) -> dict[str, float | int]:
        """`{value, low, high, n, clusters}`, rounded as results files keep them."""
        return {
            "value": round(self.value, digits),
            "low": round(self.low, digits),
            "high": round(self.high, digits),
            "n": self.n,
            "clusters": self.clusters,
        }


def needle_cluster(item_id: str) -> str:
    """The needle of a probe item (`<needle>@<length>@<depth>`): its probes at every length and depth share the
    fact, and their outcomes are nearly all-or-none per needle, so they are one cluster. An id without `@` (a
    task row) is its own cluster."""
    return item_id.split("@", 1)[0]


def cluster_bootstrap(
    values: Sequence[float],
    clusters: Sequence[Hashable],
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    weights: Sequence[float] | None = None,
) -> Estimate:
    """Mean of `values` with a percentile interval that resamples whole clusters (scipy.stats.bootstrap on the
    clusters' (sum, count) pairs, the statistic being sum over count of the resampled clusters). With `weights`
    each item counts its weight instead of 1: the statistic is a ratio of two totals over the same items (a
    column's right answers over the full cache's, `weights` the full cache's outcomes).

    Items of one cluster are not independent (one needle at two lengths and two depths is four items with nearly
    one outcome), so resampling items would count each needle four times and give intervals about half as wide as
    the data support. With a single cluster, or clusters that all have the same mean, every resample returns the
    same value: the interval is that point (the caller reports the cluster count next to it).
    """
    weights = [1.0] * len(values) if weights is None else weights
    if len(values) != len(clusters) or len(weights) != len(values):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels and {len(weights)} weights")
    if not values:
        raise ValueError("no values to estimate from")
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need a positive resample count and a level in (0, 1), got {n_resamples}, {level}")
    index: dict[Hashable, int] = {}
    for cluster in clusters:
        index.setdefault(cluster, len(index))
    sums, counts = np.zeros(len(index)), np.zeros(len(index))
    for value, cluster, weight in zip(values, clusters, weights):
        sums[index[cluster]] += value
        counts[index[cluster]] += weight
    if counts.sum() <= 0:
        raise ValueError("the weights sum to 0: no total to divide by")
    mean = float(sums.sum() / counts.sum())
    if len(index) < 2 or np.allclose(sums, mean * counts, rtol=0, atol=1e-12):
        return Estimate(mean, mean, mean, len(values), len(index))
    from scipy.stats import bootstrap

    result = bootstrap(
        (sums, counts),
        lambda s, c, axis=-1: s.sum(axis=axis) / c.sum(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return Estimate(mean, float(low), float(high), len(values), len(index))


def paired_difference(
    a: Mapping[str, float],
    b: Mapping[str, float],
    cluster: Callable[[str], Hashable] = needle_cluster,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> Estimate:
    """Mean of `a[item] - b[item]` over the items both methods answered, with a cluster-bootstrap interval.

    Pairing removes what the items share (a needle every method finds, one none finds): the interval of the
    difference is narrower than the two accuracies' intervals suggest, and it is the one that says whether one
    method beats the other on these items.
    """
    items = [item for item in a if item in b]
    if not items:
        raise ValueError("the two methods share no items")
    return cluster_bootstrap([a[i] - b[i] for i in items], [cluster(i) for i in items], n_resamples, seed, level)


def permutation_p_value(observed: float, null: Sequence[float], alternative: str = "less") -> float:
    """One-sided Monte Carlo permutation p-value of `observed` against `null` draws, (1 + #as extreme) / (1 + n).

    The ablation's question: is masking the top heads worse than masking random heads? Under the null the top
    set is one more random set, so its accuracy is exchangeable with the random sets' and its rank among the
    n + 1 is uniform; counting ties as extreme and the observed draw itself keeps the p-value valid (never 0,
    at least 1 / (n + 1): 20 random sets can show p = 0.048 at best).
    """
    if not null:
        raise ValueError("no null draws")
    if alternative not in ("less", "greater"):
        raise ValueError(f"alternative must be 'less' or 'greater', got '{alternative}'")
    extreme = sum((x <= observed) if alternative == "less" else (x >= observed) for x in null)
    return (1 + extreme) / (1 + len(null))


def method_estimates(
    records: Iterable[Any],
    value: Callable[[Any], float] = lambda r: float(r.exact),
    cluster: Callable[[str], Hashable] = needle_cluster,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[tuple[str, int | None], Estimate]:
    """Per (method, budget) of evaluation records (anything with `method`, `budget`, `item`): the mean of
    `value` (exact match by default) with its cluster-bootstrap interval."""
    groups: dict[tuple[str, int | None], list[Any]] = {}
    for record in records:
        groups.setdefault((record.method, record.budget), []).append(record)
    return {
        key: cluster_bootstrap([value(r) for r in rows], [cluster(r.item) for r in rows], n_resamples, seed)
        for key, rows in groups.items()
    }


def paired_against(
    records: Iterable[Any],
    reference: str = "headkv",
    value: Callable[[Any], float] = lambda r: float(r.exact),
    cluster: Callable[[str], Hashable] = needle_cluster,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`reference` minus every other method at the same budget, item by item, with cluster-bootstrap intervals:
    one row per (method, budget) that has a `reference` row at its budget (the full cache pairs with every
    budget of the reference)."""
    table: dict[tuple[str, int | None], dict[str, float]] = {}
    for record in records:
        table.setdefault((record.method, record.budget), {})[record.item] = value(record)
    rows = []
    for (method, budget), items in table.items():
        if method == reference:
            continue
        for ref_budget in [b for m, b in table if m == reference and (budget is None or b == budget)]:
            diff = paired_difference(table[(reference, ref_budget)], items, cluster, n_resamples, seed)
            rows.append({"method": method, "budget": ref_budget, "reference": reference, **diff.to_dict()})
    return rows
