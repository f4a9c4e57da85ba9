"""From a task row to the prompt the model reads, and how its answer is scored.

Three kinds of rows, told apart by their `dataset` field:
- a RULER task (`niah_single_1`, ...): the user turn is `context + input`, and RULER's answer prefix
  comes after the chat template's assistant header, so the model continues the prefix as its own
  answer ("... mentioned in the provided text is" -> " 4127893."). That is where RULER puts it
  (`model_template.format(task_template=...) + answer_prefix`, R@c3f5e3b scripts/data/prepare.py) and
  where kvpress puts it. Without a chat template the prompt is `context + input + answer_prefix`.
  Scored with `string_match_all` (RULER's QA tasks would use `string_match_part`).
- a LongBench dataset (`hotpotqa`, `hotpotqa_e`, ...): the dataset's template, middle truncation, the chat
  template unless the dataset is a plain completion (see `headprof.tasks.longbench`); its own metric.
- anything else (no `dataset`, or an unknown one): headprof's generic question prompt
  (`probes.render_prompt`: context, question, "answer briefly") and LongBench's QA F1, with a notice.
  Refusing unknown datasets would reject every custom task file; QA F1 is the metric LongBench uses for
  most of its datasets, and exact match / token F1 are reported next to it anyway.
Predictions are scored after stripping surrounding whitespace (kvpress strips leading whitespace before
every LongBench metric; LongBench's pred.py keeps it, which matters only for code similarity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headprof.errors import HeadprofError
from headprof.probes import encode_text, render_prompt
from headprof.tasks import longbench as LB
from headprof.tasks import metrics as M
from headprof.tasks.rows import TaskRow
from headprof.tasks.ruler import TokenCounter
from headprof.tasks.ruler_tasks import RULER_TASKS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

GENERIC_MAX_NEW_TOKENS = 32
RULER_METRICS = ("string_match_all", "string_match_part")


@dataclass(frozen=True)
class TaskPrompt:
    """A rendered row: the prompt text, whether it is chat-templated (then it holds its special tokens),
    the context exactly as it occurs in the prompt, and how to answer and score it."""

    row: TaskRow
    kind: str  # ruler | longbench | task
    task: str  # RULER task or canonical LongBench dataset; "" for generic rows
    prompt: str
    templated: bool
    context: str
    metric: str
    max_new_tokens: int


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user: str) -> tuple[str, bool]:
    """`user` as the one user turn of the model's chat template, ending with the assistant header;
    plain text when the tokenizer has no chat template."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return prompt, True
    return user, False


def ruler_prompt(tokenizer: PreTrainedTokenizerBase, user: str, answer_prefix: str) -> tuple[str, bool]:
    """RULER's prompt: the chat-templated user turn, then the answer prefix (RULER's `answer_prefix` is
    appended after the model template, so it opens the assistant turn)."""
    prompt, templated = chat_prompt(tokenizer, user)
    return prompt + answer_prefix, templated


def token_counter(tokenizer: PreTrainedTokenizerBase) -> TokenCounter:
    """Lengths as RULER measures them for this tokenizer: the whole prompt the model will read."""

    def prompt_tokens(user: str, prefix: str) -> int:
        return len(encode_text(tokenizer, *ruler_prompt(tokenizer, user, prefix))["input_ids"])

    def text_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return TokenCounter(prompt_tokens, text_tokens)


def row_kind(row: TaskRow) -> tuple[str, str]:
    """(kind, task name): how a row is prompted and scored, from its `dataset` field."""
    if row.dataset in RULER_TASKS:
        return "ruler", row.dataset
    dataset = LB.canonical_dataset(row.dataset)
    if dataset:
        return "longbench", dataset
    return "task", ""


def _check_row(row: TaskRow, dataset: str) -> None:
    metric = M.DATASET_METRIC[dataset]
    if metric == "classification" and not row.all_classes:
        raise HeadprofError(f"task row {row.id}: dataset {row.dataset} needs 'all_classes'")
    label = {"retrieval": "Paragraph ", "retrieval_zh": "段落"}.get(metric)
    if label and not all(label in a for a in row.answers):
        raise HeadprofError(f"task row {row.id}: {row.dataset} answers must name a paragraph ('{label}3')")


def render_row(
    tokenizer: PreTrainedTokenizerBase, row: TaskRow, max_tokens: int, max_new_tokens: int | None = None
) -> TaskPrompt:
    """The prompt of one row, such that prompt + answer fit in `max_tokens` (at most the model's window).

    `max_new_tokens` overrides the task's own answer length (RULER's tokens_to_generate, LongBench's
    dataset2maxlen, 32 for generic rows).
    """
    kind, task = row_kind(row)
    if kind == "ruler":
        limit = max_new_tokens or row.max_new_tokens or RULER_TASKS[task].tokens_to_generate
        prompt, templated = ruler_prompt(tokenizer, row.context + row.input, row.answer_prefix)
        return TaskPrompt(row, kind, task, prompt, templated, row.context, RULER_TASKS[task].metric, limit)
    if kind == "longbench":
        _check_row(row, task)
        limit = max_new_tokens or row.max_new_tokens or LB.DATASET_MAXLEN[task]
        head, tail = LB.split_template(task, row.input)
        raw = task in LB.RAW_COMPLETION
        overhead = 0 if raw else _chat_overhead(tokenizer)
        budget = max_tokens - limit - overhead
        if budget < 16:
            raise HeadprofError(f"task row {row.id}: no room for a prompt in {max_tokens} tokens")
        context = LB.truncate_middle(tokenizer, head, row.context, tail, budget)
        text = head + context + tail
        prompt, templated = (text, False) if raw else chat_prompt(tokenizer, text)
        return TaskPrompt(row, kind, task, prompt, templated, context, M.DATASET_METRIC[task], limit)
    limit = max_new_tokens or row.max_new_tokens or GENERIC_MAX_NEW_TOKENS
    context = row.context
    prompt, templated = render_prompt(tokenizer, context, row.input)
    excess = len(encode_text(tokenizer, prompt, templated)["input_ids"]) - (max_tokens - limit)
    if excess > 0:
        context = _drop_middle(tokenizer, context, excess)
        prompt, templated = render_prompt(tokenizer, context, row.input)
    return TaskPrompt(row, kind, task, prompt, templated, context, "qa_f1", limit)


def _chat_overhead(tokenizer: PreTrainedTokenizerBase) -> int:
    prompt, templated = chat_prompt(tokenizer, "")
    return len(encode_text(tokenizer, prompt, templated)["input_ids"]) if templated else 0


def _drop_middle(tokenizer: PreTrainedTokenizerBase, text: str, drop: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = max(0, len(ids) - drop - 8)
    return tokenizer.decode(ids[: keep // 2]) + tokenizer.decode(ids[len(ids) - (keep - keep // 2) :])


def score_prediction(
    metric: str, task: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None = None
) -> float:
    """One prediction's score in [0, 1] under the task's metric (RULER: after RULER's clean-up)."""
    prediction = prediction.strip()
    if metric == "string_match_all":
        return M.string_match_all_one(M.ruler_postprocess(prediction), answers)
    if metric == "string_match_part":
        return M.string_match_part_one(M.ruler_postprocess(prediction), answers)
    return M.longbench_sample_score(metric, prediction, answers, all_classes, task in M.FIRST_LINE_DATASETS)


def unknown_dataset_notice(rows: Sequence[TaskRow]) -> str | None:
    """One line naming the rows that get the generic prompt and QA F1, or None."""
    generic = [r for r in rows if row_kind(r)[0] == "task"]
    if not generic:
        return None
    names = sorted({r.dataset for r in generic if r.dataset})
    what = f"unknown dataset {', '.join(names)}" if names else "no dataset field"
    return (
        f"{len(generic)} task row(s) with {what}: generic question prompt, scored by QA F1 "
        f"(LongBench datasets: {', '.join(sorted(LB.DATASET_PROMPT))}; RULER: {', '.join(RULER_TASKS)})"
    )
