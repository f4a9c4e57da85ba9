"""`evaluate`: every item under every method x budget, answers scored and cached per configuration and item.

With `EvalConfig.sweep` an item's missing configurations share one prefill (`runtime.sweep`), and decoded
together (the default) the caches of several items decode as one batch (`EvalConfig.decode_tokens`); otherwise
each runs alone. Both give the same answers (decoded together: up to rounding-level ties).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from headprof.artifacts import AllocArtifact, ScoreArtifact
from headprof.errors import HeadprofError
from headprof.evaluation.items import EvalItem, content_key
from headprof.evaluation.records import EvalRecord, ResultCache
from headprof.metrics import exact_match, token_f1
from headprof.models.loading import LoadedModel
from headprof.runtime import METHODS, BudgetSource, Method, Press, build_method, build_press, default_method
from headprof.runtime.generation import RunResult, generate_answer
from headprof.runtime.methods import parse_options
from headprof.runtime.sweep import SweepPrompt, sweep_prompts
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
    # every column at uniform B's bytes: HeadKV's heads capped at the prompt hand their budget on (`spill`),
    # KVzip's question counts against its budget (`reserve`); False: each as its reference code spends
    equal_bytes: bool = True
    # decoded together: items share one batch while their prompts add up to at most this many tokens (their caches
    # are held until it decodes; at a few rows a decode step costs about the weights' reading, not the rows')
    decode_tokens: int = 8192

    @property
    def together(self) -> bool:
        """Whether an item's caches are decoded as one batch (only a sweep has them all at once)."""
        return self.sweep and self.decode_together

    def method(self, name: str, question: int = 0) -> Method:
        """The method `name` with this run's settings: `kernel`, `pooling` for the SnapKV family; with
        `equal_bytes`, HeadKV's spill and KVzip's reserve of the item's `question` tokens; then `method_options`."""
        options = parse_options(self.method_options, tuple(dict.fromkeys((*self.methods, name))))[name]
        equal = {"spill": True, "reserve": question} if self.equal_bytes else {}
        return build_method(name, **{"kernel": self.kernel, "pooling": self.pooling, **equal, **options})

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
        if self.decode_tokens < 1:
            raise HeadprofError("`decode_tokens` must be at least 1")


@dataclass(frozen=True)
class Column:
    """One configuration an evaluation answers: a method at a budget, or an allocation artifact (`label` from
    `alloc_label`) run by the method that reads per-head budgets (HeadKV's selection) at its budget."""

    label: str
    budget: int | None
    method: str
    allocation: AllocArtifact | None = None


def alloc_label(art: AllocArtifact, taken: Sequence[str] = ()) -> str:
    """An allocation artifact's column name: its policy (`tuned-<policy>` for a `tune` pick), numbered when
    another column, or a method, has it already."""
    base = ("tuned-" if "tuned_on" in art.meta else "") + str(art.meta.get("policy", "alloc"))
    label, n = base, 2
    while label in taken or label in METHODS:
        label, n = f"{base}-{n}", n + 1
    return label


def evaluate(
    loaded: LoadedModel,
    items: Sequence[EvalItem],
    config: EvalConfig,
    scores: ScoreArtifact | None = None,
    cache_path: str | Path | None = None,
    on_result: Callable[[EvalRecord], None] | None = None,
    allocations: Sequence[tuple[str, AllocArtifact]] = (),
) -> list[EvalRecord]:
    """Answer every item under every method x budget, and under each `(label, allocation)` (a column of its own
    at its budget), reusing cached results; records in method x budget x item order, then the allocations'.
    With `config.sweep` (the default) each item's missing configurations share one prefill (`runtime.sweep`);
    otherwise each configuration runs alone. Both give the same answers."""
    cache = ResultCache.open(cache_path)
    scores_id = scores.meta.get("sha256", "") if scores else ""
    columns = [Column(method, budget, method) for method, budget in config.configurations()]
    columns += [
        Column(label, int(art.meta.get("budget", 0)) or None, default_method(True), art) for label, art in allocations
    ]
    presses: dict[tuple[int, int], Press] = {}

    def question(c: int, item: EvalItem) -> int:  # what follows the context: a query-agnostic method's reserve
        return len(item.prompt_ids) - item.context_tokens if METHODS[columns[c].method].query_agnostic else 0

    def press(c: int, item: EvalItem) -> Press:
        at = (c, question(c, item))
        if at not in presses:
            column = columns[c]
            source = BudgetSource(column.budget or 0, column.allocation, scores, gqa=config.gqa, window=config.window)
            method = config.method(column.method, at[1])
            presses[at] = build_press(loaded.model, method, source, tokenizer=loaded.tokenizer, info=loaded.info)
        return presses[at]

    def key(c: int, item: EvalItem) -> str:
        column, compressor = columns[c], config.method(columns[c].method, question(c, item))
        batched = ("batch-decode",) if config.together else ()  # its answers may differ: cached apart
        return content_key(
            *batched,
            *_allocation_key(column.allocation),
            RESULTS_REVISION,
            loaded.info.fingerprint,
            column.label,
            column.budget,
            config.gqa,
            config.window,
            asdict(compressor.options),
            scores_id if compressor.needs_scores else "",
            _limit(item, config),
            item.key,
        )

    def answer(group: Group) -> None:
        limit = _limit(group[0][0], config)
        if config.sweep:
            prompts = [
                SweepPrompt([press(c, it) for c in todo], it.prompt_ids, it.context_tokens) for it, todo in group
            ]
            answers = sweep_prompts(loaded, prompts, limit, config.together)
        else:
            it, todo = group[0]
            answers = [[generate_answer(loaded, press(c, it), it.prompt_ids, it.context_tokens, limit) for c in todo]]
        for (it, todo), results in zip(group, answers):
            for c, result in zip(todo, results):
                record = _record(columns[c].label, columns[c].budget, it, result)
                cache.add(key(c, it), record)
                if on_result:
                    on_result(record)

    def missing(item: EvalItem) -> list[int]:  # the columns still to answer (the cached ones reported now)
        todo = [c for c in range(len(columns)) if key(c, item) not in cache.rows]
        for c in range(len(columns)):
            if on_result and c not in todo:
                on_result(EvalRecord(**cache.rows[key(c, item)]))
        return todo

    for group in _batches(items, missing, config):
        answer(group)
    return [EvalRecord(**cache.rows[key(c, item)]) for c in range(len(columns)) for item in items]


def _allocation_key(art: AllocArtifact | None) -> tuple[str, ...]:
    """What of an allocation column's artifact its results depend on (nothing for a method's own column)."""
    if art is None:
        return ()
    return (content_key(art.budgets.tolist(), art.meta.get("window"), art.gqa, art.meta.get("votes", 0)),)


Group = list[tuple[EvalItem, list[int]]]  # items answered together, each with its missing columns


def _batches(
    items: Sequence[EvalItem], missing: Callable[[EvalItem], list[int]], config: EvalConfig
) -> Iterator[Group]:
    """The items with missing columns, in order, grouped as they are decoded together (`_joins`)."""
    group: Group = []
    for item in items:
        todo = missing(item)
        if not todo:
            continue
        if group and not _joins(group, item, config):
            yield group
            group = []
        group.append((item, todo))
    if group:
        yield group


def _joins(group: Group, item: EvalItem, config: EvalConfig) -> bool:
    """Whether `item` is decoded in one batch with `group`: items decoded together, with the same answer length,
    while their prompts add up to at most `config.decode_tokens`."""
    tokens = sum(len(it.prompt_ids) for it, _ in group) + len(item.prompt_ids)
    return config.together and _limit(group[0][0], config) == _limit(item, config) and tokens <= config.decode_tokens


def _limit(item: EvalItem, config: EvalConfig) -> int:
    """The answer length of an item: its own (a task's), or the run's."""
    return item.max_new_tokens or config.max_new_tokens


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
