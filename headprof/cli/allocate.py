"""`headprof allocate`: per-head KV budgets from head scores."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import common, render
from headprof.cli.options import (
    GQA_MESSAGE,
    SCORE_METHOD_MESSAGE,
    Gqa,
    JsonOpt,
    ModelOpt,
    Policy,
    Rounding,
    ScoreMethod,
    choice,
)

# allocate's options (module-level, so that the command's signature stays a list of names).
AllocScoresOpt = Annotated[
    Path | None,
    typer.Option(help="Score artifact; default: the workspace's scores of --model, else its packaged reference."),
]
PolicyOpt = Annotated[Policy, choice(Policy, "unknown policy '{value}' ({choices})", "How budgets are distributed.")]
BetaOpt = Annotated[
    float | None, typer.Option(help="headkv: pool share M = N / beta (default 1.2); pyramid: slope (default 20).")
]
TempOpt = Annotated[float, typer.Option(help="headkv, headkv-floor, mix: score temperature.")]
TopOpt = Annotated[int, typer.Option(help="duo: heads that keep the long context (the best-scored).")]
SinksOpt = Annotated[int, typer.Option(help="duo: entries the other heads keep beyond the window.")]
StreamOpt = Annotated[
    int,
    typer.Option(
        help="duo: the other heads' budget instead of window + sinks; below the window they keep their "
        "last STREAM tokens only (0: window + sinks)."
    ),
]
LayerFloorOpt = Annotated[
    float, typer.Option(help="headkv-floor: share of HeadKV's pool split evenly over the layers.")
]
MixOpt = Annotated[float, typer.Option(help="mix: weight of the retrieval score against r2 (both normalised).")]
AllocWindowOpt = Annotated[int, typer.Option(help="Observation window kept in every head.")]
VotesOpt = Annotated[
    int,
    typer.Option(
        help="Last prompt queries that vote for the kept entries, when more than the window (0: the window's, as "
        "every reference); recorded in the artifact, used by run and eval."
    ),
]
AllocGqaOpt = Annotated[
    Gqa, choice(Gqa, GQA_MESSAGE, "kv: per KV head (memory-honest); query: per query head (HeadKV paper).")
]
ScoreMethodOpt = Annotated[
    ScoreMethod, choice(ScoreMethod, SCORE_METHOD_MESSAGE, "Which score drives headkv.", "--score-method")
]
RoundingOpt = Annotated[
    Rounding,
    choice(
        Rounding,
        "unknown rounding '{value}' ({choices})",
        "headkv: largest-remainder (total exactly B x heads, the default) or round (FYYFU/HeadKV's torch.round "
        "per head: its selection to the entry, total within a few entries of B x heads).",
    ),
]
ContextOpt = Annotated[int | None, typer.Option(help="Context length for the KV bytes summary; default: model window.")]
BytesPerValueOpt = Annotated[
    int | None,
    typer.Option(
        help="Bytes per cached value for the summary (2 = bf16/fp16, 4 = fp32); default: what --dtype auto runs "
        "on this machine (bf16 on CUDA, fp32 on CPU)."
    ),
]
AllocOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", help="Default: alloc-b<B>-<policy>.safetensors next to the scores (packaged: <workdir>/<model>/)."
    ),
]


def allocate(
    budget: Annotated[int, typer.Option(help="Mean KV entries per head, window included.")],
    scores: AllocScoresOpt = None,
    model: ModelOpt = "smollm2-135m",
    policy: PolicyOpt = Policy.headkv,
    beta: BetaOpt = None,
    temp: TempOpt = 1.0,
    top: TopOpt = 8,
    sinks: SinksOpt = 4,
    stream: StreamOpt = 0,
    layer_floor: LayerFloorOpt = 0.5,
    mix: MixOpt = 0.5,
    window: AllocWindowOpt = 32,
    votes: VotesOpt = 0,
    gqa: AllocGqaOpt = Gqa.kv,
    score_method: ScoreMethodOpt = ScoreMethod.r2,
    rounding: RoundingOpt = Rounding.largest_remainder,
    context: ContextOpt = None,
    bytes_per_value: BytesPerValueOpt = None,
    out_file: AllocOutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn head scores into per-head KV budgets (HeadKV S·M·N pool, uniform/SnapKV, PyramidKV, a DuoAttention-style
    split, HeadKV with a per-layer floor, HeadKV on mixed retrieval and r2 scores); see METHOD.md §3."""
    from headprof import workspace
    from headprof.allocation import AllocConfig, allocate_artifact, summarize_budgets
    from headprof.artifacts import load_scores, save_alloc
    from headprof.errors import HeadprofError
    from headprof.validation import check_outputs

    if (bytes_per_value is not None and bytes_per_value < 1) or (context is not None and context < 1):
        raise HeadprofError("--bytes-per-value and --context must be positive")
    if bytes_per_value is None:  # the dtype `run` and `eval` use by default here: the bytes they will report
        import torch

        bytes_per_value = 2 if torch.cuda.is_available() else 4
    config = AllocConfig(
        budget, policy.value, window, beta, temp, gqa.value, rounding.value, top, sinks, layer_floor, mix, stream, votes
    )
    config.validate()
    source = scores or common.default_input(model, workspace.scores_file(model), "scores")
    target = out_file or workspace.alloc_file(source, budget, policy.value, gqa.value, model)
    check_outputs([("--out", target)], [source])
    art = load_scores(source)
    alloc = allocate_artifact(art, config, score_method.value, source)
    save_alloc(target, alloc)
    summary = summarize_budgets(alloc.budgets, config, art.model, context or art.model.max_context, bytes_per_value)
    if as_json:
        render.emit({"artifact": str(target), **summary.payload()})
    else:
        render.budgets_written(target, summary)
