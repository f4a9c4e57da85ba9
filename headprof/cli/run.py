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
QuestionOpt = Annotated[str, typer.Option(metavar="<text>", help="The question about the context.")]
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
    question: QuestionOpt,
    context_file: ContextFileOpt = None,
    context: ContextOpt = None,
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
    """Answer a question about a long context with a compressed KV cache."""
    from headprof import validation
    from headprof.errors import HeadprofError, UsageError
    from headprof.runtime import BudgetSource, build_press
    from headprof.runtime.budgets import ratio_budget
    from headprof.runtime.generation import answer_question

    if budget is not None and compression_ratio is not None:
        raise UsageError("give --budget or --compression-ratio, not both")
    if compression_ratio is not None:
        ratio_budget(compression_ratio, window, alloc is not None)  # its range, before anything loads
    text = validation.text(_read_context(context_file, context), "the context")
    if not validation.text(question, "--question").strip():
        raise HeadprofError("empty question")
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
    result = answer_question(loaded, press, text, question, max_new_tokens)
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
