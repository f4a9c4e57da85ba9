"""`evaluate`: every item under every method x budget, answers scored and cached per configuration and item.

With `EvalConfig.sweep` an item's missing configurations share one prefill (`runtime.sweep`); otherwise each
runs alone. Both give the same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from headprof.artifacts import ScoreArtifact
from headprof.errors import HeadprofError
from headprof.evaluation.items import EvalItem, content_key
from headprof.evaluation.records import EvalRecord, ResultCache
from headprof.metrics import exact_match, token_f1
from headprof.models.loading import LoadedModel
from headprof.runtime import METHODS, BudgetSource, Method, Press, build_method, build_press
from headprof.runtime.generation import RunResult, generate_answer
from headprof.runtime.methods import parse_options
from headprof.runtime.sweep import sweep_answers
from headprof.tasks.prompts import score_prediction

# Part of every results-cache key: bump it when a change alters what a method keeps or answers,
# so that cached results of the old code are not reused.
RESULTS_REVISION = 2  # 2: every method as its reference code selects (fidelity)


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run: methods x budgets, cache layout, window, answer length, SnapKV-family options, and
    whether the configurations share each item's prefill."""

    methods: tuple[str, ...]
    budgets: tuple[int, ...]
    gqa: str = "kv"
    window: int = 32
    max_new_tokens: int = 32
    kernel: int = 7
    pooling: str = "max"
    sweep: bool = True  # one prefill per item for every method x budget (`runtime.sweep`); False: each alone
    decode_together: bool = True  # with `sweep`: an item's compressed caches decoded as one batch,
    # KVzip's context taken from the shared prefill (floats differ in the last bits from a run
    # alone: a greedy answer can differ at a rounding-level tie; False: each alone, token for token a single run)
    method_options: tuple[str, ...] = ()  # `[method.]key=value` texts (`runtime.methods.parse_options`)

    @property
    def together(self) -> bool:
        """Whether an item's caches are decoded as one batch (only a sweep has them all at once)."""
        return self.sweep and self.decode_together

    def method(self, name: str) -> Method:
        """The method `name` with this run's settings (`kernel`, `pooling` for the SnapKV family, then
        `method_options`)."""
        options = parse_options(self.method_options, self.methods)[name]
        return build_method(name, **{"kernel": self.kernel, "pooling": self.pooling, **options})

    def configurations(self) -> list[tuple[str, int | None]]:
        """Every (method, budget) this run answers, in report order; the full cache has one, budget None."""
        return [
            (method, budget)
            for method in self.methods
            for budget in (self.budgets if METHODS[method].compresses else (None,))
        ]

    def validate(self) -> None:
        """Fail on bad input before any model is loaded."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise HeadprofError(f"unknown method {', '.join(unknown) or '(none)'} ({', '.join(sorted(METHODS))})")
        for name in self.methods:
            self.method(name)  # validates the options
        if not self.budgets and any(METHODS[m].compresses for m in self.methods):
            raise HeadprofError("`budgets` needs at least one budget")
        if self.gqa not in ("kv", "query"):
            raise HeadprofError(f"`gqa` must be kv or query, got '{self.gqa}'")
        if self.window < 1 or any(b <= self.window for b in self.budgets):
            raise HeadprofError(f"every budget must be larger than the window {self.window}: {list(self.budgets)}")
        if self.max_new_tokens < 1:
            raise HeadprofError("`max_new_tokens` must be at least 1")


def evaluate(
    loaded: LoadedModel,
    items: Sequence[EvalItem],
    config: EvalConfig,
    scores: ScoreArtifact | None = None,
    cache_path: str | Path | None = None,
    on_result: Callable[[EvalRecord], None] | None = None,
) -> list[EvalRecord]:
    """Answer every item under every method x budget, reusing cached results; records in method x budget x item
    order. With `config.sweep` (the default) each item's missing configurations share one prefill
    (`runtime.sweep`); otherwise each configuration runs alone. Both give the same answers."""
    cache = ResultCache.open(cache_path)
    scores_id = scores.meta.get("sha256", "") if scores else ""
    configs = [(method, budget, config.method(method)) for method, budget in config.configurations()]
    presses: dict[int, Press] = {}

    def press(c: int) -> Press:
        if c not in presses:
            method, budget, compressor = configs[c]
            source = BudgetSource(budget or 0, scores=scores, gqa=config.gqa, window=config.window)
            presses[c] = build_press(loaded.model, compressor, source, tokenizer=loaded.tokenizer, info=loaded.info)
        return presses[c]

    def key(c: int, item: EvalItem) -> str:
        method, budget, compressor = configs[c]
        batched = ("batch-decode",) if config.together else ()  # its answers may differ: cached apart
        return content_key(
            *batched,
            RESULTS_REVISION,
            loaded.info.fingerprint,
            method,
            budget,
            config.gqa,
            config.window,
            asdict(compressor.options),
            scores_id if compressor.needs_scores else "",
            item.max_new_tokens or config.max_new_tokens,
            item.key,
        )

    for item in items:
        missing = [c for c in range(len(configs)) if key(c, item) not in cache.rows]
        if on_result:
            for c in range(len(configs)):
                if c not in missing:
                    on_result(EvalRecord(**cache.rows[key(c, item)]))
        if not missing:
            continue
        limit = item.max_new_tokens or config.max_new_tokens
        if config.sweep:
            chosen = [press(c) for c in missing]
            answers = sweep_answers(loaded, chosen, item.prompt_ids, item.context_tokens, limit, config.together)
        else:
            answers = [generate_answer(loaded, press(c), item.prompt_ids, item.context_tokens, limit) for c in missing]
        for c, result in zip(missing, answers):
            record = _record(configs[c][0], configs[c][1], item, result)
            cache.add(key(c, item), record)
            if on_result:
                on_result(record)
    return [EvalRecord(**cache.rows[key(c, item)]) for c in range(len(configs)) for item in items]


def _record(method: str, budget: int | None, item: EvalItem, result: RunResult) -> EvalRecord:
    """One answer scored against the item's gold answers (and by its task's metric)."""
    return EvalRecord(
        method,
        budget,
        item.id,
        item.kind,
        item.length,
        item.depth,
        result.answer,
        any(exact_match(result.answer, gold) for gold in item.answers),
        max(token_f1(result.answer, gold) for gold in item.answers),
        result.kv_bytes,
        result.kv_bytes_full,
        item.task,
        score_prediction(item.metric, item.task, result.answer, item.answers, item.all_classes)
        if item.metric
        else None,
    )
