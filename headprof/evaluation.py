"""What compression costs and whether head scores mean anything.

`evaluate`: every item (a probe, or a LongBench-style task row) under every method x budget,
answers scored by exact match (the normalised gold answer occurs in the normalised answer) and
token F1 (best over gold answers). Results are cached per (model, method, budget, parameters,
item) in a JSONL file, so an interrupted run resumes and adding a method reruns nothing else.

Head ablation lives in `ablation.py`, the agreement of scores across needles in `reliability.py`.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headprof.artifacts import ScoreArtifact
from headprof.errors import HeadprofError
from headprof.metrics import exact_match, token_f1
from headprof.models.loading import LoadedModel
from headprof.probes import Probe, encode_text, load_probes, render_prompt
from headprof.runtime import METHODS, Method, Press, build_method, plan_budgets
from headprof.runtime.generation import context_prefix_length, generate_answer
from headprof.scoring import needle_hashes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class EvalItem:
    """One question about one context, tokenized; `context_tokens` is the prefix a query-agnostic cache holds."""

    id: str
    kind: str
    prompt_ids: list[int]
    context_tokens: int
    answers: list[str]
    length: int
    depth: float | None = None
    key: str = ""


# Part of every results-cache key: bump it when a change alters what a method keeps or answers,
# so that cached results of the old code are not reused.
RESULTS_REVISION = 1


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run: methods x budgets, cache layout, window, answer length and SnapKV-family options."""

    methods: tuple[str, ...]
    budgets: tuple[int, ...]
    gqa: str = "kv"
    window: int = 32
    max_new_tokens: int = 32
    kernel: int = 7
    pooling: str = "max"

    def method(self, name: str) -> Method:
        """The method `name` with this run's settings (`--kernel`, `--pooling` for the SnapKV family)."""
        return build_method(name, kernel=self.kernel, pooling=self.pooling)

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


def _context_span(tokenizer: PreTrainedTokenizerBase, prompt: str, question: str) -> tuple[int, int]:
    """Where the context sits in a rendered prompt: render a placeholder context and diff."""
    marker = "\u2063HEADPROF\u2063"
    template, _ = render_prompt(tokenizer, marker, question)
    head, tail = template.split(marker)
    if not (prompt.startswith(head) and prompt.endswith(tail)):
        raise HeadprofError("prompt does not follow the model's template; cannot locate the context")
    return len(head), len(prompt) - len(tail)


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


def items_from_task(tokenizer: PreTrainedTokenizerBase, path: str | Path, max_tokens: int) -> list[EvalItem]:
    """LongBench JSONL rows (`context`, `input`, `answers`); over-long contexts lose their middle, as LongBench does."""
    path = Path(path)
    if not path.is_file():
        raise HeadprofError(f"task file {path} not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise HeadprofError(f"task file {path} is not UTF-8 text") from None
    items = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            context, question, answers = row["context"], row["input"], row["answers"]
        except (ValueError, KeyError, TypeError) as exc:
            raise HeadprofError(f"task file {path} line {lineno}: needs context, input, answers ({exc})") from None
        answers = [answers] if isinstance(answers, str) else [str(a) for a in answers]
        if not answers or not str(context).strip():
            raise HeadprofError(f"task file {path} line {lineno}: empty context or answers")
        prompt, templated = render_prompt(tokenizer, context, question)
        ids = encode_text(tokenizer, prompt, templated)["input_ids"]
        if len(ids) > max_tokens:
            context = _truncate_middle(tokenizer, context, len(ids) - max_tokens)
            prompt, templated = render_prompt(tokenizer, context, question)
            ids = encode_text(tokenizer, prompt, templated)["input_ids"]
        prefix = context_prefix_length(tokenizer, prompt, templated, context)
        items.append(
            EvalItem(
                str(row.get("_id", f"{path.stem}-{lineno}")),
                "task",
                list(ids),
                prefix,
                answers,
                len(ids),
                None,
                _key(prompt, answers),
            )
        )
    if not items:
        raise HeadprofError(f"task file {path} has no rows")
    return items


def _truncate_middle(tokenizer: PreTrainedTokenizerBase, text: str, drop: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = max(0, len(ids) - drop - 8)
    return tokenizer.decode(ids[: keep // 2]) + tokenizer.decode(ids[len(ids) - (keep - keep // 2) :])


def read_inputs(probe_files: Sequence[Path] | None, task: Path | None = None) -> list[Probe]:
    """Read (and check) the inputs of eval/ablate before the model loads, so bad input fails fast."""
    if task is not None and not task.is_file():
        raise HeadprofError(f"task file {task} not found")
    return [p for path in probe_files or [] for p in load_probes(path)]


def collect_items(
    loaded: LoadedModel, probes: Sequence[Probe], task: Path | None, scores: ScoreArtifact | None, max_new_tokens: int
) -> list[EvalItem]:
    """Evaluation items from probes (refused if they share needles with the scoring probes) and a task file."""
    items = []
    if probes:
        if scores is not None:
            check_disjoint(probes, scores)
        items += items_from_probes(loaded.tokenizer, probes)
    if task:
        items += items_from_task(loaded.tokenizer, task, loaded.info.max_context - max_new_tokens)
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


@dataclass
class ResultCache:
    """Append-only JSONL of finished results; a torn last line from a crash is ignored."""

    path: Path | None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path | None) -> ResultCache:
        cache = cls(Path(path) if path else None)
        if cache.path and cache.path.is_file():
            for line in cache.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                    cache.rows[row["key"]] = row["record"]
                except (ValueError, KeyError, TypeError):
                    continue
        return cache

    def add(self, key: str, record: EvalRecord) -> None:
        self.rows[key] = asdict(record)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"key": key, "record": asdict(record)}) + "\n")


def evaluate(
    loaded: LoadedModel,
    items: Sequence[EvalItem],
    config: EvalConfig,
    scores: ScoreArtifact | None = None,
    cache_path: str | Path | None = None,
    on_result: Callable[[EvalRecord], None] | None = None,
) -> list[EvalRecord]:
    """Answer every item under every method x budget, reusing cached results; records in run order."""
    cache = ResultCache.open(cache_path)
    records = []
    scores_id = scores.meta.get("sha256", "") if scores else ""
    for method in config.methods:
        budgets: tuple[int | None, ...] = (None,) if method == "full" else config.budgets
        compressor = config.method(method)
        for budget in budgets:
            press = None
            for item in items:
                key = _key(
                    RESULTS_REVISION,
                    loaded.info.fingerprint,
                    method,
                    budget,
                    config.gqa,
                    config.window,
                    asdict(compressor.options),
                    scores_id if method == "headkv" else "",
                    config.max_new_tokens,
                    item.key,
                )
                if key in cache.rows:
                    record = EvalRecord(**cache.rows[key])
                else:
                    if press is None:
                        plan = plan_budgets(
                            compressor, loaded.info, budget or 0, scores=scores, gqa=config.gqa, window=config.window
                        )
                        press = Press(loaded.model, compressor, plan, tokenizer=loaded.tokenizer)
                    result = generate_answer(loaded, press, item.prompt_ids, item.context_tokens, config.max_new_tokens)
                    record = EvalRecord(
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
                    )
                    cache.add(key, record)
                records.append(record)
                if on_result:
                    on_result(record)
    return records


def summarize(records: Iterable[EvalRecord]) -> list[dict[str, Any]]:
    """Accuracy, F1 and mean KV bytes per method and budget."""
    groups: dict[tuple[str, int | None], list[EvalRecord]] = defaultdict(list)
    for record in records:
        groups[(record.method, record.budget)].append(record)
    out = []
    for (method, budget), rows in groups.items():
        n = len(rows)
        out.append(
            {
                "method": method,
                "budget": budget,
                "accuracy": sum(r.exact for r in rows) / n,
                "f1": sum(r.f1 for r in rows) / n,
                "kv_bytes": round(sum(r.kv_bytes for r in rows) / n),
                "kv_bytes_full": round(sum(r.kv_bytes_full for r in rows) / n),
                "n": n,
            }
        )
    return out


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


def write_figures(
    records: Sequence[EvalRecord],
    results: Sequence[dict[str, Any]],
    png: str | Path,
    title: str,
    grid_budget: int | None = None,
) -> Path:
    """Accuracy vs KV bytes (one line per method, full cache as reference) at `png`, and a length x depth
    needle heatmap per method at `<png>-needles.png` (at `grid_budget`, default the middle budget)."""
    from headprof import plots

    png = Path(png)
    curves: dict[str, list[tuple[float, float]]] = defaultdict(list)
    full = None
    for r in results:
        if r["method"] == "full":
            full = (r["kv_bytes"], r["accuracy"])
        else:
            curves[r["method"]].append((r["kv_bytes"], r["accuracy"]))
    plots.accuracy_vs_bytes(curves, full, png, f"{title}: accuracy vs KV cache")
    budgets = sorted({r.budget for r in records if r.budget is not None})
    chosen = grid_budget if grid_budget is not None else (budgets[len(budgets) // 2] if budgets else None)
    grids, lengths, depths = {}, [], []
    for method in dict.fromkeys(r.method for r in records):
        rows = [r for r in records if r.method == method and r.budget in (None, chosen) and r.depth is not None]
        if rows:
            label = method if method == "full" else f"{method} B={chosen}"
            lengths, depths, grids[label] = needle_grid(rows)
    needles_png = png.with_name(png.stem + "-needles" + png.suffix)
    if grids:
        plots.needle_grids(grids, lengths, depths, needles_png, f"{title}: accuracy by length x depth")
    return needles_png


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
