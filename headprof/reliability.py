"""How much head scores depend on the needles that produced them: split-half agreement over many random
splits, and bootstrap intervals per head. Pure arithmetic on per-probe score rows (no model, no
transformers), so `show` can report it for any artifact.

The unit of resampling is the needle (`ScoreArtifact.groups`: a reasoning needle's two polarities are
one unit, since they share the needle text), stratified by kind: every split puts half of each kind's
needles in each half, every bootstrap sample draws each kind's needles with replacement. Only counted
probes enter a mean, as in the head score itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headprof.errors import HeadprofError

if TYPE_CHECKING:
    from headprof.artifacts import ScoreArtifact

DEFAULT_SPLITS = 200
DEFAULT_BOOTSTRAP = 1000
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Units:
    """Per-needle sums of the counted probes' rows, grouped by kind: what splits and resamples combine."""

    kinds: list[str]
    sums: torch.Tensor  # [G, heads] float64
    counts: torch.Tensor  # [G] float64 (counted probes per needle)
    by_kind: dict[str, list[int]]


def needle_units(rows: torch.Tensor, counted: torch.Tensor, kinds: list[str], groups: list[str]) -> Units:
    """Collapse `[N, L, H]` per-probe rows to per-needle sums over counted probes; needles with none are dropped."""
    if rows.shape[0] != len(kinds) or len(kinds) != len(groups) or counted.shape != (len(kinds),):
        raise HeadprofError("per-probe rows, kinds, groups and counted flags disagree in length")
    flat = rows.reshape(rows.shape[0], -1).double()
    index: dict[tuple[str, str], int] = {}
    for kind, group, ok in zip(kinds, groups, counted.tolist()):
        if ok:
            index.setdefault((kind, group), len(index))
    sums = torch.zeros(len(index), flat.shape[1], dtype=torch.float64)
    counts = torch.zeros(len(index), dtype=torch.float64)
    for i, (kind, group, ok) in enumerate(zip(kinds, groups, counted.tolist())):
        if ok:
            sums[index[(kind, group)]] += flat[i]
            counts[index[(kind, group)]] += 1
    by_kind: dict[str, list[int]] = {}
    for (kind, _), unit in index.items():
        by_kind.setdefault(kind, []).append(unit)
    return Units([kind for kind, _ in index], sums, counts, by_kind)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (Spearman's convention), along the last axis."""
    from scipy.stats import rankdata

    return rankdata(values, axis=-1)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _top(values: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-values, kind="stable")[:k].tolist())


@dataclass(frozen=True)
class SplitHalf:
    """Rank agreement of two disjoint needle halves, over many random needle-balanced splits."""

    spearman: list[float]
    overlap: list[float]
    k: int
    n_needles: dict[str, int]

    def summary(self) -> dict[str, Any]:
        """Median, 5th percentile and minimum of the Spearman values; median top-k overlap."""
        rho = np.asarray(self.spearman)
        return {
            "splits": len(rho),
            "needles": self.n_needles,
            "spearman_median": round(float(np.median(rho)), 4),
            "spearman_p5": round(float(np.percentile(rho, 5)), 4),
            "spearman_min": round(float(rho.min()), 4),
            f"top{self.k}_overlap_median": round(float(np.median(self.overlap)), 4),
            f"top{self.k}_overlap_p5": round(float(np.percentile(self.overlap, 5)), 4),
        }


def split_half(units: Units, n_splits: int = DEFAULT_SPLITS, seed: int = DEFAULT_SEED, k: int = 10) -> SplitHalf:
    """Spearman (over all heads) and top-k overlap of the two halves' means for `n_splits` random splits.

    Each split shuffles every kind's needles and gives half to each side (a kind's odd needle goes to the
    side that has had fewer so far, so sizes stay within one needle of each other).
    """
    if n_splits < 1:
        raise HeadprofError(f"the number of splits must be positive, got {n_splits}")
    if sum(len(u) for u in units.by_kind.values()) < 2 or any(len(u) < 2 for u in units.by_kind.values()):
        raise HeadprofError("split halves need at least two needles with counted probes of every kind")
    if not 1 <= k <= units.sums.shape[1]:
        raise HeadprofError(f"top-k must be between 1 and the number of heads ({units.sums.shape[1]}), got {k}")
    rng = random.Random(seed)
    sums, counts = units.sums.numpy(), units.counts.numpy()
    rhos, overlaps = [], []
    for _ in range(n_splits):
        side = np.zeros(len(counts), dtype=bool)  # True: half A
        lead = 0  # needles half A has more than half B
        for kind in sorted(units.by_kind):
            members = list(units.by_kind[kind])
            rng.shuffle(members)
            half = len(members) // 2
            if len(members) % 2 and lead <= 0:
                half, lead = half + 1, lead + 1
            elif len(members) % 2:
                lead -= 1
            side[members[:half]] = True
        mean_a = sums[side].sum(0) / counts[side].sum()
        mean_b = sums[~side].sum(0) / counts[~side].sum()
        rhos.append(_spearman(mean_a, mean_b))
        overlaps.append(len(_top(mean_a, k) & _top(mean_b, k)) / k)
    return SplitHalf(rhos, overlaps, k, {kind: len(u) for kind, u in sorted(units.by_kind.items())})


@dataclass(frozen=True)
class HeadInterval:
    """A head's score, its bootstrap percentile interval, and how often resamples rank it in the top k."""

    layer: int
    head: int
    score: float
    low: float
    high: float
    top_share: float

    def to_row(self) -> list[float]:
        """`[layer, head, score, low, high, top_share]`, rounded as reports print them."""
        return [self.layer, self.head, *(round(v, 6) for v in (self.score, self.low, self.high, self.top_share))]


def bootstrap_heads(
    units: Units,
    heads: list[int],
    n_heads: int,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
    k: int = 10,
) -> list[HeadInterval]:
    """Percentile intervals of the given flat heads' scores over `n_boot` needle resamples (stratified by kind).

    `n_heads` is heads per layer (to name layer and head); `top_share` is the fraction of resamples in which
    the head is among the `k` best.
    """
    if n_boot < 1 or not 0 < level < 1:
        raise HeadprofError(f"bootstrap needs a positive sample count and a level in (0, 1), got {n_boot}, {level}")
    if not units.by_kind:
        raise HeadprofError("no counted probes to resample")
    rng = np.random.default_rng(seed)
    sums, counts = units.sums.numpy(), units.counts.numpy()
    weights = np.zeros((n_boot, len(counts)))
    for kind in sorted(units.by_kind):
        members = np.asarray(units.by_kind[kind])
        draws = rng.integers(0, len(members), size=(n_boot, len(members)))
        for row, draw in enumerate(draws):
            np.add.at(weights[row], members[draw], 1.0)
    means = (weights @ sums) / (weights @ counts)[:, None]  # [n_boot, heads]
    kth = -np.sort(-means, axis=1)[:, k - 1 : k]  # each resample's k-th best score
    full = sums.sum(0) / counts.sum()
    alpha = (1 - level) / 2 * 100
    out = []
    for flat in heads:
        low, high = np.percentile(means[:, flat], [alpha, 100 - alpha])
        share = float((means[:, flat : flat + 1] >= kth).mean())
        out.append(HeadInterval(flat // n_heads, flat % n_heads, float(full[flat]), float(low), float(high), share))
    return out


def reliability_report(
    rows: torch.Tensor,
    counted: torch.Tensor,
    kinds: list[str],
    groups: list[str],
    top: int = 10,
    n_splits: int = DEFAULT_SPLITS,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Split-half distribution and the top heads' bootstrap intervals of one score, as reports print them.

    `split_half` is None (with a `reason`) when the counted probes come from too few needles to split.
    """
    units = needle_units(rows, counted, kinds, groups)
    n_layers, n_heads = rows.shape[1], rows.shape[2]
    k = min(10, n_layers * n_heads)
    report: dict[str, Any] = {"split_half": None, "top_heads": []}
    try:
        halves = split_half(units, n_splits, seed, k)
        report["split_half"] = halves.summary()
        report["split_half_values"] = [round(v, 4) for v in halves.spearman]
    except HeadprofError as exc:
        report["reason"] = str(exc)
    few = sorted(kind for kind, members in units.by_kind.items() if len(members) < 2)
    if units.by_kind and few:
        # Resampling one needle gives that needle back every time: a zero-width interval that looks certain.
        report["bootstrap_reason"] = (
            f"bootstrap intervals need at least two needles of every kind ({', '.join(few)}: one)"
        )
    elif units.by_kind:
        means = units.sums.sum(0) / units.counts.sum()
        order = torch.argsort(means, descending=True, stable=True)[:top].tolist()
        intervals = bootstrap_heads(units, order, n_heads, n_boot, seed, k=k)
        report["top_heads"] = [interval.to_row() for interval in intervals]
        report["bootstrap"] = {"samples": n_boot, "level": 0.95, "top_k": k}
    return report


def artifact_reliability(
    art: ScoreArtifact,
    n_splits: int = DEFAULT_SPLITS,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
    top: int = 10,
    first: str | None = None,
    gqa: str = "query",
) -> dict[str, dict[str, Any]]:
    """`reliability_report` of every score in a score artifact, `first` (default: the main score, r2) first;
    `gqa="kv"` reports the per-KV-head sums `show --gqa kv` shows."""
    from headprof.heads import kv_view

    first = first or art.default_method
    order = [first] + [m for m in art.methods if m != first]
    reports = {}
    for method in order:
        rows = art.per_probe[method]
        if gqa == "kv":
            rows = kv_view(rows, art.model.n_kv_heads)
        reports[method] = reliability_report(
            rows, art.counted, art.probe_kinds, art.groups, top, n_splits, n_boot, seed
        )
    return reports
