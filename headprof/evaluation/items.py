"""Evaluation items: probes and task rows tokenized, with the context prefix a query-agnostic cache holds.

Inputs are checked here before a model loads (`read_inputs`, `check_disjoint`): a probe file given twice,
a probe id in two files, or evaluation needles shared with the scoring probes are refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from headprof import validation
from headprof.artifacts import ScoreArtifact
from headprof.errors import HeadprofError
from headprof.probes import Probe, context_span, encode_text, load_probes
from headprof.runtime.generation import context_prefix_length
from headprof.scoring import needle_hashes
from headprof.tasks.prompts import render_row
from headprof.tasks.rows import TaskRow, read_task_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from headprof.models.loading import LoadedModel


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


def _context_span(tokenizer: PreTrainedTokenizerBase, prompt: str, question: str) -> tuple[int, int]:
    """Where the context sits in a rendered prompt."""
    span = context_span(tokenizer, prompt, question)
    if span is None:
        raise HeadprofError("prompt does not follow the model's template; cannot locate the context")
    return span


def content_key(*parts: object) -> str:
    """A short stable hash of JSON-able parts: an item's identity, and with a configuration a results-cache key."""
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
                content_key(probe.prompt, probe.answer),
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
                content_key(rendered.prompt, row.answers, rendered.metric, row.all_classes),
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
    validation.no_duplicates([str(Path(f).resolve()) for f in files], "`probes`")
    probes = [p for path in files for p in load_probes(path)]
    ids = [p.id for p in probes]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise HeadprofError(f"probe {twice} is in more than one `probes` file: it would be counted twice")
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
