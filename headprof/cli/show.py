"""`headprof show`: the top heads and a heatmap of a score or allocation artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import common, render
from headprof.cli.options import (
    GQA_MESSAGE,
    SCORE_METHOD_MESSAGE,
    BootstrapOpt,
    Gqa,
    JsonOpt,
    ModelOpt,
    ScoreMethod,
    SeedOpt,
    SplitsOpt,
    choice,
)

# show's options (module-level, so that the command's signature stays a list of names).
ArtifactArg = Annotated[
    Path | None,
    typer.Argument(
        metavar="ARTIFACT",
        help="A score or allocation artifact; default: the workspace's scores of --model, else its packaged ones.",
    ),
]
ShownMethodOpt = Annotated[
    ScoreMethod | None, choice(ScoreMethod, SCORE_METHOD_MESSAGE, "Score to show (default: r2 if present).")
]
ShowPngOpt = Annotated[
    Path | None,
    typer.Option(help="Also write a heatmap (layers x heads); score artifacts: <png>-reliability.png too."),
]


def show(
    artifact: ArtifactArg = None,
    model: ModelOpt = "smollm2-135m",
    method: ShownMethodOpt = None,
    top: Annotated[int, typer.Option(help="Rows in the top-heads table.")] = 10,
    gqa: Annotated[Gqa, choice(Gqa, GQA_MESSAGE, "query, or kv: sum over each KV group.")] = Gqa.query,
    png: ShowPngOpt = None,
    splits: SplitsOpt = 200,
    bootstrap: BootstrapOpt = 1000,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Top heads, per-layer summary and a heatmap of a score (or budget) artifact; for scores, the split-half
    agreement over random needle splits and bootstrap intervals of the top heads."""
    from headprof import workspace
    from headprof.artifacts import SCORES_FORMAT, artifact_format, head_table, load_scores
    from headprof.errors import HeadprofError
    from headprof.heads import layer_summary, top_heads
    from headprof.reliability import artifact_reliability
    from headprof.validation import check_outputs, resampling

    if top < 1:
        raise HeadprofError(f"--top must be at least 1, got {top}")
    resampling(splits, bootstrap)
    artifact = artifact or common.default_input(model, workspace.scores_file(model), "scores")
    reliability_png = png.with_name(png.stem + "-reliability" + png.suffix) if png else None
    check_outputs([("--png", png), ("the reliability figure", reliability_png)], [artifact])
    table = head_table(artifact, method.value if method else None, gqa.value)
    reports = None
    if artifact_format(artifact) == SCORES_FORMAT:
        art = load_scores(artifact)
        first = method.value if method else art.default_method
        reports = artifact_reliability(art, splits, bootstrap, seed, top, first, gqa.value)
    pngs: list[Path] = []
    if png:
        from headprof import plots

        plots.score_heatmap(table.values, png, f"{table.model.model_id}: {table.label}")
        pngs.append(png)
        if reports:
            pngs.append(png.with_name(png.stem + "-reliability" + png.suffix))
            plots.reliability_figure(reports, pngs[-1], f"{table.model.model_id}: {table.label}")
    layers = layer_summary(table.values, table.model.window_layers)
    best = top_heads(table.values, top)
    if not as_json:
        render.head_table(
            artifact,
            table.label,
            table.model.model_id,
            table.values,
            table.counts,
            table.mode,
            top,
            best,
            layers,
            reports,
            pngs,
        )
        return
    extra = {} if table.counts is None else {"counts": table.counts, "mode": table.mode}
    if reports:
        extra["reliability"] = {m: {k: v for k, v in r.items() if k != "split_half_values"} for m, r in reports.items()}
    render.emit(
        {
            "artifact": str(artifact),
            "model": table.model.model_id,
            "what": table.label,
            **extra,
            "top_heads": best,
            "layers": layers,
            "png": [str(p) for p in pngs] or None,
        }
    )
