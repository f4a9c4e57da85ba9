"""What compression costs and whether head scores mean anything.

`evaluate`: every item (a probe, a generated RULER row or a LongBench-layout task row) under every
method x budget, answers scored by exact match (the normalised gold answer occurs in the normalised
answer) and token F1 (best over gold answers), and task items also by their task's own metric
(`headprof.tasks`). Results are cached per (model, method, budget, parameters, item) in a JSONL
file, so an interrupted run resumes and adding a method reruns nothing else.

Head ablation lives in `ablation.py`, the agreement of scores across needles in `reliability.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headprof import validation
from headprof.artifacts import AllocArtifact, ScoreArtifact
from headprof.errors import HeadprofError
from headprof.intervals import wilson_interval
from headprof.metrics import exact_match, token_f1
from headprof.models.loading import LoadedModel
from headprof.probes import Probe, context_span, encode_text, load_probes
from headprof.runtime import METHODS, Method, Press, build_method, plan_budgets
from headprof.runtime.generation import RunResult, context_prefix_length, generate_answer
from headprof.runtime.sweep import sweep_answers
from headprof.scoring import needle_hashes
from headprof.tasks.prompts import render_row, score_prediction
from headprof.tasks.rows import TaskRow, read_task_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from headprof.plots import AccuracyPoint


@dataclass(frozen=True)
class EvalItem:
    """One question about one context, tokenized; `context_tokens` is the prefix a query-agnostic cache holds.

    Task items also carry their task (RULER task or LongBench dataset), its metric, the classes of a
    classification dataset and their own answer length (0: the evaluation's `max_new_tokens`).
    """

    id: str
    kind: str
    prompt_ids: list[int]
    context_tokens: int
    answers: list[str]
    length: int
    depth: float | None = None
    key: str = ""
    task: str = ""
    metric: str = ""
    all_classes: tuple[str, ...] | None = None
    max_new_tokens: int = 0


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
    batch_decode: bool = (
        False  # decode an item's compressed caches as one batch (faster; floats differ in the last bits)
    )
    # every column at uniform B's bytes: HeadKV's heads capped at the prompt hand their budget on (`spill`),
    # KVzip's question counts against its budget (`reserve`); False: each as its reference code spends
    equal_bytes: bool = True

    def method(self, name: str, question: int = 0) -> Method:
        """The method `name` with this run's settings (`--kernel`, `--pooling` for the SnapKV family; with
        `equal_bytes`, HeadKV's spill and KVzip's reserve of the item's `question` tokens)."""
        if not self.equal_bytes:
            return build_method(name, kernel=self.kernel, pooling=self.pooling)
        return build_method(name, kernel=self.kernel, pooling=self.pooling, spill=True, reserve=question)

    def validate(self) -> None:
        """Fail on bad input before any model is loaded."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise HeadprofError(f"unknown method {', '.join(unknown) or '(none)'} ({', '.join(sorted(METHODS))})")
        for name in self.methods:
            self.method(name)  # validates the options
        if not self.budgets and set(self.methods) != {"full"}:
            raise HeadprofError("--budgets needs at least one budget")
        if self.gqa not in ("kv", "query"):
            raise HeadprofError(f"--gqa must be kv or query, got '{self.gqa}'")
        if self.window < 1 or any(b <= self.window for b in self.budgets):
            raise HeadprofError(f"every budget must be larger than the window {self.window}: {list(self.budgets)}")
        if self.max_new_tokens < 1:
            raise HeadprofError("--max-new-tokens must be at least 1")
        if self.batch_decode and not self.sweep:
            raise HeadprofError("--batch-decode decodes a sweep's caches together: it does not go with --per-config")


@dataclass
class EvalRecord:
    """One answer under one method and budget, scored, with the KV bytes it needed: a results-cache row."""

    method: str
    budget: int | None
    item: str
    kind: str
    length: int
    depth: float | None
    answer: str
    exact: bool
    f1: float
    kv_bytes: int
    kv_bytes_full: int
    task: str = ""
    score: float | None = None  # the task's own metric in [0, 1]; None for probes


def _context_span(tokenizer: PreTrainedTokenizerBase, prompt: str, question: str) -> tuple[int, int]:
    """Where the context sits in a rendered prompt."""
    span = context_span(tokenizer, prompt, question)
    if span is None:
        raise HeadprofError("prompt does not follow the model's template; cannot locate the context")
    return span


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def items_from_probes(tokenizer: PreTrainedTokenizerBase, probes: Iterable[Probe]) -> list[EvalItem]:
    """Evaluation items from probes, with the context prefix a query-agnostic method compresses alone."""
    items = []
    for probe in probes:
        ids = encode_text(tokenizer, probe.prompt, probe.templated)["input_ids"]
        start, end = _context_span(tokenizer, probe.prompt, probe.question)
        prefix = context_prefix_length(tokenizer, probe.prompt, probe.templated, probe.prompt[start:end])
        items.append(
            EvalItem(
                probe.id,
                probe.kind,
                list(ids),
                prefix,
                [probe.answer],
                probe.length,
                probe.depth,
                _key(probe.prompt, probe.answer),
            )
        )
    return items


def items_from_rows(
    tokenizer: PreTrainedTokenizerBase, rows: Sequence[TaskRow], max_tokens: int, max_new_tokens: int | None = None
) -> list[EvalItem]:
    """Task rows as items: each rendered (`tasks.prompts.render_row`) to fit `max_tokens` with its answer."""
    items = []
    for row in rows:
        rendered = render_row(tokenizer, row, max_tokens, max_new_tokens)
        ids = encode_text(tokenizer, rendered.prompt, rendered.templated)["input_ids"]
        prefix = context_prefix_length(tokenizer, rendered.prompt, rendered.templated, rendered.context)
        length = row.length if rendered.kind == "ruler" and row.length else len(ids)
        items.append(
            EvalItem(
                row.id,
                rendered.kind,
                list(ids),
                prefix,
                list(row.answers),
                length,
                None,
                _key(rendered.prompt, row.answers, rendered.metric, row.all_classes),
                rendered.task or row.dataset or "task",
                rendered.metric,
                row.all_classes,
                rendered.max_new_tokens,
            )
        )
    return items


def items_from_task(
    tokenizer: PreTrainedTokenizerBase, path: str | Path, max_tokens: int, max_new_tokens: int | None = None
) -> list[EvalItem]:
    """LongBench-layout JSONL rows (`context`, `input`, `answers`, optional `dataset`, `all_classes`, ...);
    over-long contexts lose their middle, as LongBench does."""
    return items_from_rows(tokenizer, read_task_file(path), max_tokens, max_new_tokens)


def read_inputs(probe_files: Sequence[Path] | None) -> list[Probe]:
    """Read (and check) the probes of eval/ablate before the model loads, so bad input fails fast: every probe
    file parses, no file is given twice, no probe id appears twice (a task file is checked by `TaskSource`)."""
    files = list(probe_files or [])
    validation.no_duplicates([str(Path(f).resolve()) for f in files], "--probes")
    probes = [p for path in files for p in load_probes(path)]
    ids = [p.id for p in probes]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise HeadprofError(f"probe {twice} is in more than one --probes file: it would be counted twice")
    return probes


def collect_items(
    loaded: LoadedModel,
    probes: Sequence[Probe],
    rows: Sequence[TaskRow] | None,
    scores: ScoreArtifact | None,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
) -> list[EvalItem]:
    """Evaluation items from probes (refused if they share needles with the scoring probes) and task rows
    (each within `max_length` tokens with its answer; default and upper limit: the model's window)."""
    items = []
    if probes:
        if scores is not None:
            check_disjoint(probes, scores)
        items += items_from_probes(loaded.tokenizer, probes)
    if rows:
        window = loaded.info.max_context
        limit = min(max_length, window) if max_length and window else (max_length or window or 10**9)
        items += items_from_rows(loaded.tokenizer, rows, limit, max_new_tokens)
    return items


def check_disjoint(probes: Sequence[Probe], scores: ScoreArtifact) -> None:
    """Refuse evaluation probes that share a needle with the probes that produced the scores."""
    produced = set(scores.meta.get("needle_sha256") or [])
    if produced:
        shared = produced & set(needle_hashes(probes))
        names = sorted({p.needle_id for p in probes if needle_hashes([p])[0] in shared})
    else:  # older or imported artifacts: fall back to needle ids (probe ids are "<needle>@<length>@<depth>")
        shared = {pid.split("@")[0] for pid in scores.probe_ids} & {p.needle_id for p in probes}
        names = sorted(shared)
    if shared:
        raise HeadprofError(
            f"evaluation probes share {len(shared)} needle(s) with the scoring probes "
            f"({', '.join(names[:3])}{'...' if len(names) > 3 else ''}); use disjoint needles"
        )


# ---------------------------------------------------------------- results cache


# What each results-cache field holds: (types allowed, low, high); `task` and `score` are optional (older rows).
_FIELDS: dict[str, tuple[tuple[type, ...], float | None, float | None]] = {
    "method": ((str,), None, None),
    "budget": ((int, type(None)), 1, None),
    "item": ((str,), None, None),
    "kind": ((str,), None, None),
    "length": ((int,), 0, None),
    "depth": ((int, float, type(None)), 0, 100),
    "answer": ((str,), None, None),
    "exact": ((bool,), None, None),
    "f1": ((int, float), 0, 1),
    "kv_bytes": ((int,), 0, None),
    "kv_bytes_full": ((int,), 0, None),
    "task": ((str,), None, None),
    "score": ((int, float, type(None)), 0, 1),
}
_OPTIONAL = ("task", "score")


def _cached_record(row: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A results-cache row as `(key, record)`, every field of its type and range: an edited row (`f1` 1.5,
    `kv_bytes` -5, a field missing or unknown) is refused, never reported as a result."""
    fix = "; delete that line (or the file) and its result is computed again"
    if not isinstance(row, dict) or set(row) != {"key", "record"} or not isinstance(row["key"], str):
        raise HeadprofError(f"{where} is not a {{'key', 'record'}} row{fix}")
    record = row["record"]
    if not isinstance(record, dict):
        raise HeadprofError(f"{where}: the record is not an object{fix}")
    missing = [name for name in _FIELDS if name not in record and name not in _OPTIONAL]
    extra = sorted(set(record) - set(_FIELDS))
    if missing or extra:
        raise HeadprofError(
            f"{where}: the record {'lacks ' + str(missing) if missing else 'has unknown ' + str(extra)}{fix}"
        )
    for name, value in record.items():
        types, low, high = _FIELDS[name]
        wrong_type = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if wrong_type or (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high))
        ):
            raise HeadprofError(f"{where}: {name} {value!r} is not a valid value{fix}")
    return row["key"], record


@dataclass
class ResultCache:
    """Append-only JSONL of finished results. A torn last line from a crash (not JSON) is ignored and the next
    row starts on a line of its own; a row that is JSON but not a valid result is refused (`_cached_record`)."""

    path: Path | None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path | None) -> ResultCache:
        cache = cls(Path(path) if path else None)
        if cache.path and (cache.path.exists() or cache.path.is_symlink()):
            what = "results cache"
            validation.input_file(cache.path, what)
            text = cache.path.read_bytes().decode("utf-8", errors="replace")
            for lineno, line in enumerate(text.split("\n"), 1):
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    continue  # a line torn by a crash
                key, record = _cached_record(row, f"{what} {cache.path} line {lineno}")
                cache.rows[key] = record
        return cache

    def add(self, key: str, record: EvalRecord) -> None:
        self.rows[key] = asdict(record)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as fh:
                torn = fh.tell() > 0 and fh.seek(-1, 2) >= 0 and fh.read(1) != b"\n"
                line = ("\n" if torn else "") + json.dumps({"key": key, "record": asdict(record)}) + "\n"
                fh.write(line.encode("utf-8"))


def alloc_label(art: AllocArtifact, taken: Sequence[str] = ()) -> str:
    """An allocation artifact's column name: its policy (`tuned-<policy>` for a `tune` pick), numbered when
    another column has it already."""
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
    """Answer every item under every method x budget, and under each `(label, allocation)` (HeadKV's selection
    on its budgets, a column of its own at its budget), reusing cached results; records in method x budget x
    item order, then the allocations'. With `config.sweep` (the default) each item's missing configurations
    share one prefill (`runtime.sweep`); otherwise each configuration runs alone. Both give the same answers."""
    cache = ResultCache.open(cache_path)
    scores_id = scores.meta.get("sha256", "") if scores else ""
    configs: list[tuple[str, int | None, AllocArtifact | None]] = [
        (method, budget, None)
        for method in config.methods
        for budget in ((None,) if method == "full" else config.budgets)
    ]
    configs += [(label, int(art.meta.get("budget", 0)) or None, art) for label, art in allocations]
    presses: dict[tuple[int, int], Press] = {}

    def question(c: int, item: EvalItem) -> int:  # what follows the context: KVzip's reserve at equal bytes
        return len(item.prompt_ids) - item.context_tokens if configs[c][0] == "kvzip" else 0

    def compressor(c: int, item: EvalItem) -> Method:
        return config.method("headkv" if configs[c][2] is not None else configs[c][0], question(c, item))

    def press(c: int, item: EvalItem) -> Press:
        if (c, question(c, item)) not in presses:
            _, budget, art = configs[c]
            method = compressor(c, item)
            plan = plan_budgets(
                method, loaded.info, budget or 0, allocation=art, scores=scores, gqa=config.gqa, window=config.window
            )
            presses[(c, question(c, item))] = Press(loaded.model, method, plan, tokenizer=loaded.tokenizer)
        return presses[(c, question(c, item))]

    def key(c: int, item: EvalItem) -> str:
        method, budget, art = configs[c]
        batched = ("batch-decode",) if config.batch_decode else ()  # its answers may differ: cached apart
        allocation = (_key(art.budgets.tolist(), art.meta.get("window"), art.gqa),) if art is not None else ()
        return _key(
            *batched,
            *allocation,
            RESULTS_REVISION,
            loaded.info.fingerprint,
            method,
            budget,
            config.gqa,
            config.window,
            asdict(compressor(c, item).options),
            scores_id if method == "headkv" else "",
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
            chosen = [press(c, item) for c in missing]
            answers = sweep_answers(loaded, chosen, item.prompt_ids, item.context_tokens, limit, config.batch_decode)
        else:
            answers = [
                generate_answer(loaded, press(c, item), item.prompt_ids, item.context_tokens, limit) for c in missing
            ]
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


def summarize(records: Iterable[EvalRecord]) -> list[dict[str, Any]]:
    """One row per method x budget: accuracy (exact match), token F1, mean KV bytes, n; when task items are
    among the records, also `tasks` (per task, and per length for RULER, the task metric in percent,
    2 decimals, as RULER and LongBench report it) and `score` (the mean of those task scores)."""
    groups: dict[tuple[str, int | None], list[EvalRecord]] = defaultdict(list)
    for record in records:
        groups[(record.method, record.budget)].append(record)
    out = []
    for (method, budget), rows in groups.items():
        n = len(rows)
        summary: dict[str, Any] = {
            "method": method,
            "budget": budget,
            "accuracy": sum(r.exact for r in rows) / n,
            "f1": sum(r.f1 for r in rows) / n,
            "kv_bytes": round(sum(r.kv_bytes for r in rows) / n),
            "kv_bytes_full": round(sum(r.kv_bytes_full for r in rows) / n),
            "n": n,
        }
        tasks = task_scores(rows)
        if tasks:
            summary["tasks"] = tasks
            summary["score"] = round(sum(t["score"] for t in tasks) / len(tasks), 2)
        out.append(summary)
    return out


def task_scores(records: Iterable[EvalRecord]) -> list[dict[str, Any]]:
    """Task metric per task (and per target length for RULER rows) in percent, in first-seen order."""
    groups: dict[tuple[str, int | None], list[float]] = defaultdict(list)
    for r in records:
        if r.score is not None:
            groups[(r.task, r.length if r.kind == "ruler" else None)].append(r.score)
    return [
        {"task": task, "length": length, "score": round(100 * sum(v) / len(v), 2), "n": len(v)}
        for (task, length), v in groups.items()
    ]


def result_cells(
    results: Sequence[dict[str, Any]],
    methods: Sequence[str],
    budgets: Sequence[int],
    cell: Callable[[dict[str, Any]], str],
) -> list[list[str]]:
    """Rows `[method, cell(B1), cell(B2), ...]`; the full cache has one result, shown under every budget."""
    by = {(r["method"], r["budget"]): r for r in results}
    rows = []
    for method in methods:
        found = [by.get((method, None if method == "full" else b)) for b in budgets]
        rows.append([method] + [cell(r) if r else "-" for r in found])
    return rows


def task_cells(
    results: Sequence[dict[str, Any]], methods: Sequence[str], budgets: Sequence[int]
) -> tuple[list[str], list[list[str]]]:
    """Task scores as a table: one row per task (x length for RULER, as RULER reports per length), one
    column per method x budget, a last row with each column's mean; "-" where a task has no result."""
    by = {(r["method"], r["budget"]): r for r in results}
    configs = [
        (method, budget)
        for method in methods
        for budget in ((None,) if method == "full" else budgets)
        if "tasks" in by.get((method, budget), {})
    ]
    keys = list(dict.fromkeys((t["task"], t["length"]) for c in configs for t in by[c]["tasks"]))
    scores = {c: {(t["task"], t["length"]): t["score"] for t in by[c]["tasks"]} for c in configs}
    rows = [
        [task + (f" @{length}" if length else "")]
        + [f"{scores[c][(task, length)]:.1f}" if (task, length) in scores[c] else "-" for c in configs]
        for task, length in keys
    ]
    rows.append(["mean"] + [f"{by[c]['score']:.1f}" for c in configs])
    header = ["task"] + [method if budget is None else f"{method} {budget}" for method, budget in configs]
    return header, rows


def accuracy_points(results: Sequence[dict[str, Any]]) -> dict[str, list[AccuracyPoint]]:
    """Figure points per method from `summarize` rows (or the same rows read back from a results file), each
    with the 95% Wilson interval of its exact-match accuracy over its `n` items (exact match is yes/no per
    item, so the accuracy is a binomial proportion)."""
    from headprof.plots import AccuracyPoint

    points: dict[str, list[AccuracyPoint]] = defaultdict(list)
    for r in results:
        successes = round(r["accuracy"] * r["n"])
        interval = wilson_interval(successes, r["n"])
        points[r["method"]].append(AccuracyPoint(r["kv_bytes"], r["accuracy"], r["budget"], interval))
    return points


def write_figures(
    records: Sequence[EvalRecord],
    results: Sequence[dict[str, Any]],
    png: str | Path,
    title: str,
    grid_budget: int | None = None,
) -> Path | None:
    """Accuracy vs KV bytes (one line per method, full cache as reference, 95% Wilson interval bars) at `png`,
    and a length x depth needle heatmap per method at `<png>-needles.png` (at `grid_budget`, default the middle
    budget) when `records` hold needle probes; returns that heatmap's path (None: none written)."""
    from headprof import plots

    png = Path(png)
    curves = accuracy_points(results)
    full = curves.pop("full", [None])[0]
    sizes = sorted({r["n"] for r in results})
    note = f"bars: 95% Wilson score interval of each accuracy over its {'/'.join(map(str, sizes))} items"
    plots.accuracy_vs_bytes(curves, full, png, f"{title}: accuracy vs KV cache", note)
    budgets = sorted({r.budget for r in records if r.budget is not None})
    chosen = grid_budget if grid_budget is not None else (budgets[len(budgets) // 2] if budgets else None)
    grids, lengths, depths = {}, [], []
    for method in dict.fromkeys(r.method for r in records):
        rows = [r for r in records if r.method == method and r.budget in (None, chosen) and r.depth is not None]
        if rows:
            label = method if method == "full" else f"{method} B={chosen}"
            lengths, depths, grids[label] = needle_grid(rows)
    if not grids:  # no needle probes (task rows only): no heatmap
        return None
    needles_png = needles_png_path(png)
    plots.needle_grids(grids, lengths, depths, needles_png, f"{title}: accuracy by length x depth")
    return needles_png


def needles_png_path(png: str | Path) -> Path:
    """Where `write_figures` puts the length x depth heatmap next to the accuracy plot."""
    png = Path(png)
    return png.with_name(png.stem + "-needles" + png.suffix)


def needle_grid(records: Iterable[EvalRecord]) -> tuple[list[int], list[float], torch.Tensor]:
    """Accuracy by depth (rows) x context length (columns) for records of one method and budget."""
    rows = [r for r in records if r.depth is not None]
    lengths = sorted({r.length for r in rows})
    depths = sorted({float(r.depth) for r in rows})
    hits, counts = torch.zeros(len(depths), len(lengths)), torch.zeros(len(depths), len(lengths))
    for r in rows:
        i, j = depths.index(float(r.depth)), lengths.index(r.length)
        hits[i, j] += float(r.exact)
        counts[i, j] += 1
    return lengths, depths, hits / counts.clamp(min=1)
