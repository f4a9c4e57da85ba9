"""Choose an allocation policy and its parameters on validation needles, report the choice on test needles.

The protocol cannot fool itself: the candidates (policies x parameters, `grid`) are ranked on the validation
probes only; the test probes (other needles, another haystack order, `probes build --generated --split test`)
are answered once, by the pick of each budget, HeadKV's pool as published and the full cache, and never
influence the pick. Every candidate is run by HeadKV's selection with `spill` (budgets above the prompt
handed on), so every column holds exactly the bytes of uniform B. Each item is prefilled once for all
candidates (`runtime.sweep`). Intervals resample whole needles (an item's depths share its needle, and
outcomes are nearly all-or-none per needle).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headprof.allocation import AllocConfig, allocate_artifact
from headprof.artifacts import AllocArtifact, ScoreArtifact
from headprof.errors import HeadprofError
from headprof.evaluation import EvalItem
from headprof.models.loading import LoadedModel
from headprof.probes import Probe
from headprof.scoring import needle_hashes


@dataclass(frozen=True)
class TuneConfig:
    """Budgets to tune, the answer length, the cache layout, and the seed of the needle bootstrap."""

    budgets: tuple[int, ...]
    max_new_tokens: int = 24
    gqa: str = "kv"
    draws: int = 2000
    seed: int = 0

    def validate(self) -> None:
        """Fail before any model is loaded."""
        if not self.budgets or any(b < 9 for b in self.budgets):
            raise HeadprofError(
                f"--budgets must be at least 9 entries each (a window of 8 and one more): {self.budgets}"
            )
        if len(set(self.budgets)) != len(self.budgets):
            raise HeadprofError(f"--budgets lists a budget twice: {list(self.budgets)}")
        if self.max_new_tokens < 1:
            raise HeadprofError("--max-new-tokens must be at least 1")


def published(budget: int, gqa: str = "kv") -> AllocConfig:
    """HeadKV's pool as the paper runs it (beta 1.2, temp 1, r2), with the window the issue's baseline used:
    32, or 8 where the budget leaves a 32-token window almost nothing (B < 64)."""
    return AllocConfig(budget, "headkv", 32 if budget >= 64 else 8, gqa=gqa)


def grid(budget: int, gqa: str = "kv") -> list[AllocConfig]:
    """The candidates at `budget`: HeadKV's pool (beta 1.2 as published, 1.01: nearly all pooled), the
    DuoAttention-style split (4 or 16 long-context heads), HeadKV with a per-layer floor (half the pool), and
    HeadKV on mixed retrieval and r2 scores (weights 0.5, 1), each at windows of 8 and 16 (and 32 where
    B >= 64), a window below 32 voted both by its own queries and by the last 32 (`votes`: a short window is
    the chat template's tail, the last 32 reach the question); and the duo split with 4, 8 or 16 top heads
    whose other heads keep only their last 8 tokens under a 32-token window, at every B. The published
    HeadKV configuration is first, so it wins ties."""
    windows = [w for w in (8, 16, 32) if w < budget and (w < 32 or budget >= 64)]
    out = [published(budget, gqa)]
    for window, votes in [(w, v) for w in windows for v in ((0, 32) if w < 32 else (0,))]:
        at = {"window": window, "gqa": gqa, "votes": votes}
        out += [AllocConfig(budget, "headkv", beta=beta, **at) for beta in (1.2, 1.01)]
        out += [AllocConfig(budget, "duo", top=top, **at) for top in (4, 16)]
        out.append(AllocConfig(budget, "headkv-floor", beta=1.01, layer_floor=0.5, **at))
        out += [AllocConfig(budget, "mix", beta=1.01, mix=weight, **at) for weight in (0.5, 1.0)]
    # streaming heads below the window: votes from a 32-token window (it reaches back to the question) at any B
    out += [AllocConfig(budget, "duo", 32, gqa=gqa, top=top, stream=8) for top in (4, 8, 16)]
    unique: dict[str, AllocConfig] = {}
    for config in out:
        unique.setdefault(label(config), config)
    return list(unique.values())


def label(config: AllocConfig) -> str:
    """A short name of a candidate: policy, its parameters, the window."""
    knobs = " ".join(f"{k}={v:g}" for k, v in config.parameters().items())
    votes = f" votes={config.votes}" if config.votes else ""
    return f"{config.policy} {knobs} w={config.window}{votes}".replace("  ", " ")


@dataclass(frozen=True)
class Column:
    """One configuration's outcomes: 1/0 per item id, in item order; `config` None for the full cache."""

    name: str
    config: AllocConfig | None
    correct: dict[str, int]
    kv_bytes: float

    @property
    def accuracy(self) -> float:
        return sum(self.correct.values()) / max(len(self.correct), 1)


def answer_columns(
    loaded: LoadedModel,
    items: Sequence[EvalItem],
    columns: Sequence[tuple[str, AllocArtifact | None]],
    max_new_tokens: int,
    on_item: Callable[[], None] | None = None,
) -> list[Column]:
    """Every item answered under every column (an allocation run by the method that reads per-head budgets, at
    exactly its bytes, or None: the full cache) by `evaluation.evaluate`: one prefill per item shared by all of
    them, their caches decoded as one batch."""
    from headprof.evaluation import EvalConfig, evaluate

    full = [name for name, art in columns if art is None]
    config = EvalConfig(("full",) if full else (), (), max_new_tokens=max_new_tokens)
    allocations = [(name, art) for name, art in columns if art is not None]
    seen = [0]

    def count(_record: object) -> None:  # evaluate reports every column of an item, then the next item
        seen[0] += 1
        if on_item and seen[0] % len(columns) == 0:
            on_item()

    by_column: dict[str, list] = defaultdict(list)
    for record in evaluate(loaded, items, config, on_result=count, allocations=allocations):
        by_column[full[0] if record.method == "full" and full else record.method].append(record)
    return [
        Column(
            name,
            None if art is None else _config_of(art),
            {r.item: int(r.exact) for r in by_column[name]},
            sum(r.kv_bytes for r in by_column[name]) / max(len(by_column[name]), 1),
        )
        for name, art in columns
    ]


def _config_of(art: AllocArtifact) -> AllocConfig:
    """The configuration an artifact of `allocate_artifact` was made with (from its metadata)."""
    meta = art.meta
    votes = int(meta.get("votes", 0))
    return AllocConfig(
        int(meta["budget"]), meta["policy"], int(meta["window"]), gqa=art.gqa, votes=votes, **meta["parameters"]
    )


def clusters(probes: Sequence[Probe]) -> dict[str, str]:
    """Item id -> its needle (the unit the bootstrap resamples)."""
    return {p.id: p.needle_id for p in probes}


def clustered_interval(
    correct: dict[str, int],
    cluster_of: dict[str, str],
    baseline: dict[str, int] | None = None,
    draws: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of the accuracy (or, with `baseline`, of the paired difference accuracy -
    baseline's on the same items) resampling whole needles with replacement (seeded: reproducible)."""
    units: dict[str, list[int]] = defaultdict(list)
    for item, value in correct.items():
        units[cluster_of[item]].append(value - (baseline[item] if baseline is not None else 0))
    sums = [(sum(v), len(v)) for v in units.values()]
    rng = random.Random(seed)
    stats = []
    for _ in range(draws):
        picked = [sums[rng.randrange(len(sums))] for _ in sums]
        stats.append(sum(s for s, _ in picked) / sum(n for _, n in picked))
    stats.sort()
    return stats[int(0.025 * draws)], stats[min(draws - 1, int(0.975 * draws))]


def check_splits(validation: Sequence[Probe], test: Sequence[Probe]) -> None:
    """Refuse validation and test probes that share a needle (by text hash or needle id): the test result
    would then measure the data the pick was chosen on."""
    shared = set(needle_hashes(validation)) & set(needle_hashes(test))
    shared_ids = {p.needle_id for p in validation} & {p.needle_id for p in test}
    if shared or shared_ids:
        raise HeadprofError(
            f"the validation and test probes share {max(len(shared), len(shared_ids))} needle(s); "
            "build them with `probes build --generated --split validation` and `--split test`"
        )


@dataclass
class TuneResult:
    """Per budget: every candidate's validation accuracy, the pick (its artifact records what it was tuned and
    tested on), and the test columns: the full cache, HeadKV as published, each policy's best on validation."""

    validation: dict[int, list[Column]]
    picks: dict[int, Column]
    artifacts: dict[int, AllocArtifact]
    test: dict[int, list[Column]]
    test_clusters: dict[str, str]
    draws: int
    seed: int

    def payload(self) -> dict[str, Any]:
        """The `tune --json` fields: test columns with needle-clustered intervals and the paired difference
        against HeadKV's published pool on the same items, at the same bytes."""
        out: dict[str, Any] = {"budgets": {}}
        for budget, columns in self.test.items():
            headkv = columns[1]  # HeadKV as published: the first column after the full cache
            rows = []
            for column in columns:
                row: dict[str, Any] = {
                    "name": column.name,
                    "pick": column.name == self.picks[budget].name,
                    "published": column is headkv,
                    "accuracy": round(column.accuracy, 4),
                    "interval": [round(x, 4) for x in self._interval(column.correct)],
                    "kv_bytes": round(column.kv_bytes),
                    "n": len(column.correct),
                    "correct": column.correct,  # per item: the records a table of these rows recomputes from
                }
                if column.config is not None and column is not headkv:
                    row["vs_headkv"] = round(column.accuracy - headkv.accuracy, 4)
                    row["vs_headkv_interval"] = [round(x, 4) for x in self._interval(column.correct, headkv.correct)]
                rows.append(row)
            ranked = sorted(self.validation[budget], key=lambda c: -c.accuracy)  # stable: grid order in ties
            out["budgets"][str(budget)] = {
                "pick": self.picks[budget].name,
                "pick_validation_accuracy": round(self.picks[budget].accuracy, 4),
                "validation": [{"name": c.name, "accuracy": round(c.accuracy, 4)} for c in ranked],
                "test": rows,
            }
        return out

    def _interval(self, correct: dict[str, int], baseline: dict[str, int] | None = None) -> tuple[float, float]:
        return clustered_interval(correct, self.test_clusters, baseline, self.draws, self.seed)


@dataclass(frozen=True)
class ProbeSplit:
    """Probes of one split, their evaluation items, and where they came from (recorded in the pick's artifact)."""

    probes: Sequence[Probe]
    items: Sequence[EvalItem]
    source: str
    sha256: str

    def record(self) -> dict[str, Any]:
        """What an artifact records of the split."""
        return {"file": self.source, "sha256": self.sha256, "items": len(self.items), "needles": len(clusters_of(self))}


def clusters_of(split: ProbeSplit) -> set[str]:
    """The needles of a split."""
    return set(clusters(split.probes).values())


def tune(
    loaded: LoadedModel,
    scores: ScoreArtifact,
    scores_path: Path,
    validation: ProbeSplit,
    test: ProbeSplit,
    config: TuneConfig,
    progress: Callable[[str, int], Callable[[], None]] | None = None,
) -> TuneResult:
    """Rank `grid(B)` on the validation items (one sweep for all budgets' candidates), pick the best per budget
    (ties: the earlier candidate, the published HeadKV first), then answer the test items under the full
    cache, HeadKV as published and each policy's best on validation (the pick among them)."""
    check_splits(validation.probes, test.probes)
    candidates = [c for b in config.budgets for c in grid(b, config.gqa)]
    artifacts = {(c.budget, label(c)): allocate_artifact(scores, c, "r2", scores_path) for c in candidates}
    names = [(label(c), artifacts[(c.budget, label(c))]) for c in candidates]
    tick = progress("validation", len(validation.items)) if progress else None
    by_budget: dict[int, list[Column]] = defaultdict(list)
    for column in answer_columns(loaded, validation.items, names, config.max_new_tokens, tick):
        by_budget[column.config.budget if column.config else 0].append(column)
    picks = {b: max(by_budget[b], key=lambda c: c.accuracy) for b in config.budgets}  # max keeps the first
    test_columns: list[tuple[int, str, AllocArtifact | None]] = [(0, "full", None)]
    for b in config.budgets:
        names_b = [label(published(b, config.gqa))]
        for policy in dict.fromkeys(c.config.policy for c in by_budget[b] if c.config):
            best = max((c for c in by_budget[b] if c.config and c.config.policy == policy), key=lambda c: c.accuracy)
            names_b.append(best.name)
        test_columns += [(b, name, artifacts[(b, name)]) for name in dict.fromkeys(names_b)]
    tick = progress("test", len(test.items)) if progress else None
    tested = answer_columns(loaded, test.items, [(n, a) for _, n, a in test_columns], config.max_new_tokens, tick)
    per_budget = {
        b: [tested[0]] + [c for (cb, _, _), c in zip(test_columns, tested) if cb == b] for b in config.budgets
    }
    chosen = {}
    for b, pick in picks.items():
        tested_pick = next(c for c in per_budget[b] if c.name == pick.name)
        art = artifacts[(b, pick.name)]
        meta = dict(art.meta, tuned_on=validation.record(), tested_on=test.record())
        meta |= {"validation_accuracy": round(pick.accuracy, 4), "test_accuracy": round(tested_pick.accuracy, 4)}
        meta["candidates"] = len(by_budget[b])
        chosen[b] = AllocArtifact(art.model, art.budgets, meta)
    return TuneResult(dict(by_budget), picks, chosen, per_budget, clusters(test.probes), config.draws, config.seed)
