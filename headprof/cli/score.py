"""`headprof score`: per-head scores from attention captured on the probes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import common, progress, render
from headprof.cli.options import (
    SCORE_METHOD_MESSAGE,
    BootstrapOpt,
    Criterion,
    DeviceMapOpt,
    DeviceOpt,
    Dtype,
    DtypeOpt,
    JsonOpt,
    Mode,
    ModelOpt,
    ScoreMethods,
    SeedOpt,
    Span,
    SplitsOpt,
    choice,
)


def score(
    model: ModelOpt = "smollm2-135m",
    probes: Annotated[
        Path | None, typer.Option(help="Probe JSONL; default: <workdir>/<model>/probes.jsonl (`probes build`).")
    ] = None,
    method: Annotated[
        ScoreMethods, choice(ScoreMethods, SCORE_METHOD_MESSAGE, "Which head scores (both: one pass for the two).")
    ] = ScoreMethods.both,
    mode: Annotated[
        Mode,
        choice(
            Mode,
            "unknown mode '{value}' ({choices})",
            "teacher: the answer sentence forced, all count; generate: the model's own answers (HeadKV).",
        ),
    ] = Mode.teacher,
    span: Annotated[
        Span,
        choice(
            Span,
            "unknown scoring span '{value}' ({choices})",
            "Needle tokens scored. reference: each score's own (retrieval: the answer, r2: its sentence).",
        ),
    ] = Span.reference,
    criterion: Annotated[
        Criterion,
        choice(
            Criterion,
            "unknown correctness criterion '{value}' ({choices})",
            "generate mode: when an answer counts (answer: the gold answer occurs in it; f1: F1 > 0.5 vs the "
            "sentence, HeadKV's; recall, f1-answer: vs the answer).",
        ),
    ] = Criterion.answer,
    dtype: DtypeOpt = Dtype.auto,
    device: DeviceOpt = "auto",
    device_map: DeviceMapOpt = None,
    shard: Annotated[
        str | None, typer.Option(metavar="<i/N>", help="Score only every N-th probe from i (merge later).")
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Default: <workdir>/<model>/scores[-<mode>].safetensors.")
    ] = None,
    splits: SplitsOpt = 200,
    bootstrap: BootstrapOpt = 1000,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Run the model on the probes with attention capture and write per-head scores."""
    from headprof import scoring, validation
    from headprof.score_job import ScoreJob, score_report
    from headprof.validation import check_outputs

    methods = ("retrieval", "r2") if method is ScoreMethods.both else (method.value,)
    config = scoring.ScoreConfig(methods, mode.value, span.value, criterion.value)
    config.validate()
    validation.resampling(splits, bootstrap)
    job = ScoreJob.plan(model, probes, mode.value, shard, out_file)
    check_outputs([("--out", job.target)], [job.source])
    with job.held():
        loaded = common.load(model, dtype.value, job.world.device(device), device_map)
        common.warn_foreign_probes(job.probes, loaded.spec.name)
        started = time.time()
        with progress.bar(f"scoring {loaded.spec.name}", len(job.select)) as advance:
            art = job.score(loaded, config, on_probe=lambda _r: advance())
        seconds = time.time() - started
    if art is None:  # another rank's: rank 0 wrote the artifact
        return
    report = score_report(art, job.target, seconds, (splits, bootstrap, seed))
    if as_json:
        render.emit(report)
    else:
        render.scores_written(report)
