"""`headprof run`: answer a question about a long context with a compressed KV cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from headprof.cli import common, render
from headprof.cli.options import (
    GQA_MESSAGE,
    DeviceOpt,
    Dtype,
    DtypeOpt,
    Gqa,
    JsonOpt,
    KernelOpt,
    MethodName,
    MethodOptionOpt,
    ModelOpt,
    Pooling,
    PoolingOpt,
    choice,
)

if TYPE_CHECKING:
    from headprof.artifacts import AllocArtifact, ScoreArtifact
    from headprof.runtime.budgets import BudgetSource
    from headprof.runtime.methods.base import Method


# run's options (module-level, so that the command's signature stays a list of names).
QuestionOpt = Annotated[str | None, typer.Option(metavar="<text>", help="The question about the context.")]
QuestionsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Several prompts decoded together, one answer each: a text file of questions (one a line) about the "
        'context, or a .jsonl file of {"question": ..., "context": ...} rows (context optional: the shared one).'
    ),
]
ContextsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Several prompts decoded together: each *.txt file of this folder (by name) is a context, "
        "asked --question."
    ),
]
ContextFileOpt = Annotated[Path | None, typer.Option("--context-file", help="Text file with the context.")]
ContextOpt = Annotated[
    str | None, typer.Option(metavar="<text>", help="The context as a string (instead of --context-file).")
]
RunMethodOpt = Annotated[
    MethodName | None,
    choice(MethodName, "unknown method '{value}' ({choices})", "Default: headkv with --alloc/--scores, else snapkv."),
]
BudgetOpt = Annotated[int | None, typer.Option(help="KV entries per head, window included (default 128).")]
RatioOpt = Annotated[
    float | None,
    typer.Option(
        help="Instead of --budget, as kvpress means it: the share of the prompt's KV entries dropped (0.5: each "
        "head keeps half of the prompt on average)."
    ),
]
AllocOpt = Annotated[Path | None, typer.Option(help="Allocation artifact (per-head budgets; implies headkv).")]
RunScoresOpt = Annotated[
    Path | None,
    typer.Option(help="Score artifact: HeadKV budgets on the fly (--method headkv alone: the model's default)."),
]
RunGqaOpt = Annotated[
    Gqa | None,
    choice(
        Gqa, GQA_MESSAGE, "kv: one selection per KV head; query: per query head (default: the allocation's, else kv)."
    ),
]
RunWindowOpt = Annotated[int, typer.Option(help="Observation window kept in every head.")]


def run(
    question: QuestionOpt = None,
    context_file: ContextFileOpt = None,
    context: ContextOpt = None,
    questions: QuestionsOpt = None,
    contexts: ContextsOpt = None,
    model: ModelOpt = "smollm2-135m",
    method: RunMethodOpt = None,
    budget: BudgetOpt = None,
    compression_ratio: RatioOpt = None,
    alloc: AllocOpt = None,
    scores: RunScoresOpt = None,
    gqa: RunGqaOpt = None,
    window: RunWindowOpt = 32,
    kernel: KernelOpt = 7,
    pooling: PoolingOpt = Pooling.max,
    method_option: MethodOptionOpt = None,
    max_new_tokens: int = 64,
    dtype: DtypeOpt = Dtype.auto,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Answer a question about a long context with a compressed KV cache (several prompts, decoded together:
    --questions or --contexts)."""
    from headprof.errors import UsageError
    from headprof.runtime import BudgetSource, build_press
    from headprof.runtime.budgets import ratio_budget
    from headprof.runtime.generation import answer_question, answer_questions

    if budget is not None and compression_ratio is not None:
        raise UsageError("give --budget or --compression-ratio, not both")
    if compression_ratio is not None:
        ratio_budget(compression_ratio, window, alloc is not None)  # its range, before anything loads
    prompts = _prompts(question, questions, contexts, context_file, context)
    allocation, score_art = _artifacts(model, method, alloc, scores)
    compressor = _method(method, allocation is not None or score_art is not None, kernel, pooling, method_option)
    source = BudgetSource(
        128 if budget is None else budget,
        allocation,
        score_art,
        (gqa or Gqa.kv).value,
        window,
        compression_ratio=compression_ratio,
    )
    _check_before_loading(model, compressor, source, max_new_tokens, alloc, gqa)
    loaded = common.load(model, dtype.value, device)
    press = build_press(loaded.model, compressor, source, tokenizer=loaded.tokenizer, info=loaded.info)
    if len(prompts) > 1 or questions or contexts:
        results = answer_questions(loaded, press, [pair for _, *pair in prompts], max_new_tokens)
        payloads = [{"prompt": label, **r.report(compressor.name)} for (label, *_), r in zip(prompts, results)]
        if as_json:
            render.emit({"answers": payloads})
        for payload in [] if as_json else payloads:
            render.answer(f"{payload.pop('prompt')}: {compressor.name}", payload)
        return
    result = answer_question(loaded, press, *prompts[0][1:], max_new_tokens)
    payload = result.report(compressor.name)
    if as_json:
        render.emit(payload)
        return
    if compressor.compresses and not result.compressed:
        render.notice(
            f"every head's budget covers the {result.prompt_tokens}-token prompt: nothing was dropped "
            "(and no head was scored)"
        )
    what = f"budgets from {alloc}" if alloc else f"compression ratio {compression_ratio}" if compression_ratio else ""
    render.answer(f"{compressor.name} ({what or f'budget {source.budget}'})", payload)


def _artifacts(
    model: str, method: MethodName | None, alloc: Path | None, scores: Path | None
) -> tuple[AllocArtifact | None, ScoreArtifact | None]:
    """The allocation and score artifacts the budgets come from; a method that allocates from head scores and
    is given neither gets the model's default scores."""
    from headprof import workspace
    from headprof.artifacts import load_alloc, load_scores
    from headprof.runtime.methods import METHODS

    if method and METHODS[method.value].needs_scores and not alloc and not scores:
        scores = common.default_input(model, workspace.scores_file(model), "scores")
    return (load_alloc(alloc) if alloc else None), (load_scores(scores) if scores and not alloc else None)


def _method(
    method: MethodName | None, has_budgets: bool, kernel: int, pooling: Pooling, pairs: list[str] | None
) -> Method:
    """The method named (default: headkv with budgets or scores, else snapkv) with `--kernel`, `--pooling` and
    then its `--method-option`s."""
    from headprof.runtime import build_method, default_method
    from headprof.runtime.methods import parse_options

    name = method.value if method else default_method(has_budgets)
    options = parse_options(pairs or [], [name])[name]
    return build_method(name, **{"kernel": kernel, "pooling": pooling.value, **options})


def _check_before_loading(
    model: str, compressor: Method, source: BudgetSource, max_new_tokens: int, alloc: Path | None, gqa: Gqa | None
) -> None:
    """What the model is not needed for: the budget (when `--budget` applies), the answer length, the
    artifacts' model; a `--gqa` an allocation overrides is said."""
    from headprof import validation
    from headprof.errors import HeadprofError

    fixed_budget = compressor.compresses and source.allocation is None and source.compression_ratio is None
    if fixed_budget:
        validation.budget_and_window(source.budget, source.window, "--")
    if max_new_tokens < 1:
        raise HeadprofError("--max-new-tokens must be at least 1")
    if source.allocation is not None and gqa is not None and gqa.value != source.allocation.gqa:
        render.notice(f"{alloc} holds per-{source.allocation.gqa}-head budgets; --gqa {gqa.value} is ignored")
    common.check_before_loading(
        model,
        budgets=[source.budget] if fixed_budget else [],
        artifacts=[("allocation", source.allocation), ("score artifact", source.scores)],
    )


def _prompts(
    question: str | None, questions: Path | None, contexts: Path | None, context_file: Path | None, context: str | None
) -> list[tuple[str, str, str]]:
    """(label, context, question) of every prompt the options name: `--question` about the context; each line (or
    JSONL row) of `--questions` about the context (a row's own context first); `--question` about each file of
    `--contexts`."""
    from headprof import validation
    from headprof.errors import HeadprofError, UsageError

    if (question is None) == (questions is None):
        raise UsageError("give exactly one of --question and --questions")
    if contexts is not None:
        if questions is not None or context_file is not None or context is not None:
            raise UsageError("--contexts takes --question only (not --questions, --context or --context-file)")
        files = sorted(contexts.glob("*.txt")) if contexts.is_dir() else []
        if not files:
            raise HeadprofError(f"--contexts {contexts}: no *.txt files in that folder")
        pairs = [(file.name, _read_context(file, None), question) for file in files]
    elif questions is not None:
        shared = _read_context(context_file, context) if context_file or context is not None else None
        pairs = _question_rows(questions, shared)
    else:
        pairs = [("", validation.text(_read_context(context_file, context), "the context"), question)]
    for label, _, text in pairs:
        if not validation.text(text, "--question").strip():
            raise HeadprofError(f"empty question{f' ({label})' if label else ''}")
    return pairs


def _question_rows(path: Path, shared: str | None) -> list[tuple[str, str, str]]:
    """`--questions`: a question a line, or (.jsonl) a {"question", "context"} object a line."""
    from headprof import validation
    from headprof.errors import HeadprofError
    from headprof.interop import read_json_strict

    rows = []
    for number, line in enumerate(validation.read_lines(path, "questions file"), 1):
        if not line.strip():
            continue
        label, question, context = f"line {number}", line.strip(), shared
        if path.suffix == ".jsonl":
            try:
                row = read_json_strict(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("question"), str):
                raise HeadprofError(f'{path} {label}: not a JSON object with a "question" string')
            question, context = row["question"], row.get("context", shared)
            if context is not None and not isinstance(context, str):
                raise HeadprofError(f'{path} {label}: "context" is not a string')
        if context is None or not context.strip():
            raise HeadprofError(f"{path} {label}: no context (give one in the row, --context or --context-file)")
        rows.append((label, validation.text(context, "the context"), question))
    if not rows:
        raise HeadprofError(f"{path}: no questions")
    return rows


def _read_context(context_file: Path | None, context: str | None) -> str:
    from headprof.errors import HeadprofError, UsageError

    if (context_file is None) == (context is None):
        raise UsageError("give exactly one of --context-file and --context")
    if context_file is not None:
        from headprof.validation import input_file

        context = input_file(context_file, "context file").read_text(encoding="utf-8", errors="replace")
    if not context or not context.strip():
        raise HeadprofError("empty context")
    return context
