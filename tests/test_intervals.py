"""Clustered statistics: needle-cluster bootstrap intervals, paired differences, the ablation's permutation p-value."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from dataclasses import dataclass

import pytest

from headprof.intervals import (
    cluster_bootstrap,
    method_estimates,
    needle_cluster,
    paired_against,
    paired_difference,
    permutation_p_value,
    wilson_interval,
)


def _needles(n: int, seed: int = 0) -> list[float]:
    """One all-or-none outcome per needle, each needle right with its own probability."""
    rng = random.Random(seed)
    return [float(rng.random() < rng.random()) for _ in range(n)]


def test_repeating_a_needle_adds_no_information():
    """Four probes of one needle with one outcome are one observation: the cluster interval of 20 needles x 4
    probes is exactly that of the 20 needles alone, and wider than treating the 80 probes as independent."""
    outcomes = _needles(20)
    once = cluster_bootstrap(outcomes, list(range(20)))
    values = [v for v in outcomes for _ in range(4)]
    clusters = [i for i in range(20) for _ in range(4)]
    repeated = cluster_bootstrap(values, clusters)
    assert (repeated.low, repeated.high, repeated.value) == (once.low, once.high, once.value)
    assert (repeated.n, repeated.clusters) == (80, 20)
    naive = cluster_bootstrap(values, list(range(80)))
    assert naive.high - naive.low < 0.7 * (repeated.high - repeated.low)
    low, high = wilson_interval(int(sum(values)), 80)  # the bars the figures drew: as narrow as the naive one
    assert high - low < 0.7 * (repeated.high - repeated.low)


def test_many_independent_items_match_the_normal_interval():
    """With 2000 independent yes/no items the percentile interval is p +- 1.96 sqrt(p(1-p)/n) to within 0.005."""
    values = [float(i % 10 < 3) for i in range(2000)]  # p = 0.3 exactly
    est = cluster_bootstrap(values, list(range(2000)), seed=1)
    half = 1.959964 * math.sqrt(0.3 * 0.7 / 2000)
    assert est.value == pytest.approx(0.3)
    assert est.low == pytest.approx(0.3 - half, abs=0.005) and est.high == pytest.approx(0.3 + half, abs=0.005)


def test_weights_make_the_estimate_a_ratio_of_cluster_totals():
    """`weights` (a column's share of the full cache's right answers): the value is the ratio of the totals, the
    resampling that of the clusters; weights of one are the plain mean."""
    outcomes = _needles(20)
    clusters = [i // 2 for i in range(20)]
    full = [1.0 if i % 3 else 0.0 for i in range(20)]
    share = cluster_bootstrap(outcomes, clusters, weights=full)
    assert share.value == pytest.approx(sum(outcomes) / sum(full)) and share.low < share.value < share.high
    assert cluster_bootstrap(outcomes, clusters, weights=[1.0] * 20) == cluster_bootstrap(outcomes, clusters)
    with pytest.raises(ValueError, match="weights sum to 0"):
        cluster_bootstrap(outcomes, clusters, weights=[0.0] * 20)


def test_unequal_cluster_sizes_weight_items_not_clusters():
    est = cluster_bootstrap([1.0, 1.0, 1.0, 0.0], ["a", "a", "a", "b"])
    assert est.value == 0.75 and est.clusters == 2
    assert est.low == 0.0 and est.high == 1.0  # resamples of {a, b}: only a, only b, or both (0.75)


def test_degenerate_and_bad_input():
    assert cluster_bootstrap([1.0, 1.0, 1.0], ["a", "b", "c"]).to_dict() == {
        "value": 1.0, "low": 1.0, "high": 1.0, "n": 3, "clusters": 3,
    }  # fmt: skip
    single = cluster_bootstrap([1.0, 0.0], ["a", "a"])
    assert (single.low, single.high, single.clusters) == (0.5, 0.5, 1)
    with pytest.raises(ValueError, match="cluster labels"):
        cluster_bootstrap([1.0], [])
    with pytest.raises(ValueError, match="no values"):
        cluster_bootstrap([], [])
    assert cluster_bootstrap(_needles(30), range(30), seed=3) == cluster_bootstrap(_needles(30), range(30), seed=3)


def test_paired_difference_cancels_what_the_items_share():
    """Method b is right exactly where a is, plus on one needle more: the difference is that needle's share,
    a narrow interval, although both accuracies have wide ones."""
    outcomes = _needles(20, seed=4)
    a = {f"n{i}@1024@{d}": v for i, v in enumerate(outcomes) for d in (25, 75)}
    gained = next(i for i, v in enumerate(outcomes) if v == 0.0)
    b = {item: 1.0 if item.startswith(f"n{gained}@") else v for item, v in a.items()}
    b["extra@1024@25"] = 1.0  # answered by b only: not paired
    diff = paired_difference(b, a)
    assert diff.value == pytest.approx(0.05) and (diff.n, diff.clusters) == (40, 20)
    assert 0.0 <= diff.low <= diff.high <= 0.15
    alone = cluster_bootstrap(list(a.values()), [needle_cluster(i) for i in a])
    assert alone.high - alone.low > 2 * (diff.high - diff.low)
    with pytest.raises(ValueError, match="share no items"):
        paired_difference({"x": 1.0}, {"y": 1.0})


@dataclass
class _Record:
    method: str
    budget: int | None
    item: str
    exact: bool


def test_per_method_estimates_and_differences_against_a_reference():
    items = [f"n{i}@1024@{d}" for i in range(6) for d in (25, 75)]
    right = {"headkv": {0, 1, 2, 3}, "snapkv": {0, 1}, "full": {0, 1, 2, 3, 4}}
    records = [
        _Record(method, None if method == "full" else 128, item, int(needle_cluster(item)[1:]) in hits)
        for method, hits in right.items()
        for item in items
    ]
    estimates = method_estimates(records)
    assert estimates[("headkv", 128)].value == pytest.approx(4 / 6) and estimates[("headkv", 128)].clusters == 6
    rows = {r["method"]: r for r in paired_against(records, "headkv")}
    assert rows["snapkv"]["value"] == pytest.approx(2 / 6, abs=1e-4) and rows["snapkv"]["budget"] == 128
    assert rows["full"]["value"] == pytest.approx(-1 / 6, abs=1e-4)  # headkv minus the full cache
    # headkv is right on every needle snapkv gets and two more, but a resample of 6 needles misses both of those
    # with probability (4/6)^6 = 0.088 > 0.025: with 6 needles the interval reaches 0
    assert rows["snapkv"]["low"] == 0.0 and rows["snapkv"]["high"] > 0.5


def test_permutation_p_value():
    assert permutation_p_value(0.1, [0.5] * 20) == pytest.approx(1 / 21)  # below every random set
    assert permutation_p_value(0.5, [0.5] * 20) == 1.0  # ties count against the top set
    assert permutation_p_value(0.3, [0.2, 0.4, 0.6, 0.8]) == pytest.approx(2 / 5)
    assert permutation_p_value(0.9, [0.2, 0.4, 0.6, 0.8], "greater") == pytest.approx(1 / 5)
    with pytest.raises(ValueError):
        permutation_p_value(0.1, [])
    with pytest.raises(ValueError):
        permutation_p_value(0.1, [0.2], "two-sided")


def test_statistics_and_needle_generation_import_no_model_code():
    """The statistics and the needle generator are pure: a report or a probe set needs neither torch nor
    transformers to import them."""
    script = (
        "import sys, headprof.intervals, headprof.needlegen; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
