"""`headprof show`: the top heads and a heatmap of a score or allocation artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import common, render
from headprof.cli.options import GQA_MESSAGE, SCORE_METHOD_MESSAGE, Gqa, JsonOpt, ModelOpt, ScoreMethod, choice


def show(
    artifact: Annotated[
        Path | None,
        typer.Argument(
            metavar="ARTIFACT",
            help="A score or allocation artifact; default: the workspace's scores of --model, else its packaged ones.",
        ),
    ] = None,
    model: ModelOpt = "smollm2-135m",
    method: Annotated[
        ScoreMethod | None, choice(ScoreMethod, SCORE_METHOD_MESSAGE, "Score to show (default: r2 if present).")
    ] = None,
    top: Annotated[int, typer.Option(help="Rows in the top-heads table.")] = 10,
    gqa: Annotated[Gqa, choice(Gqa, GQA_MESSAGE, "query, or kv: sum over each KV group.")] = Gqa.query,
    png: Annotated[Path | None, typer.Option(help="Also write a matplotlib heatmap (layers x heads).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Top heads, per-layer summary and a heatmap of a score (or budget) artifact."""
    from headprof import workspace
    from headprof.artifacts import head_table
    from headprof.errors import HeadprofError
    from headprof.heads import layer_summary, top_heads
    from headprof.validation import check_outputs

    if top < 1:
        raise HeadprofError(f"--top must be at least 1, got {top}")
    artifact = artifact or common.default_input(model, workspace.scores_file(model), "scores")
    check_outputs([("--png", png)], [artifact])
    table = head_table(artifact, method.value if method else None, gqa.value)
    if png:
        from headprof.plots import score_heatmap

        score_heatmap(table.values, png, f"{table.model.model_id}: {table.label}")
    layers = layer_summary(table.values, table.model.window_layers)
    best = top_heads(table.values, top)
    if not as_json:
        render.head_table(
            artifact, table.label, table.model.model_id, table.values, table.counts, table.mode, top, best, layers, png
        )
        return
    extra = {} if table.counts is None else {"counts": table.counts, "mode": table.mode}
    render.emit(
        {
            "artifact": str(artifact),
            "model": table.model.model_id,
            "what": table.label,
            **extra,
            "top_heads": best,
            "layers": layers,
            "png": str(png) if png else None,
        }
    )
