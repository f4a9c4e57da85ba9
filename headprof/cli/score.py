"""`headprof score`: per-head scores from attention captured on the probes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from headprof.cli import common, render
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

if TYPE_CHECKING:
    from headprof.artifacts import ScoreArtifact


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
    from headprof import distributed, scoring, validation, workspace
    from headprof import probes as P
    from headprof.artifacts import save_scores
    from headprof.errors import HeadprofError
    from headprof.fileio import exclusive
    from headprof.validation import check_outputs

    methods = ("retrieval", "r2") if method is ScoreMethods.both else (method.value,)
    config = scoring.ScoreConfig(methods, mode.value, span.value, criterion.value)
    config.validate()
    validation.resampling(splits, bootstrap)
    source = probes or workspace.probe_file(model)
    if probes is None and not source.is_file():
        raise HeadprofError(f"no probe set at {source}: run `headprof probes build` first, or give --probes FILE")
    probe_list = P.load_probes(source)
    select, shard_meta = distributed.shard_indices(len(probe_list), shard)
    target = out_file or workspace.scores_file(model, mode.value, shard_meta.get("shard"))
    check_outputs([("--out", target)], [source])
    world = distributed.World.from_env()
    wanted, select = select, world.split(select)
    checkpoint = world.checkpoint(target)
    with exclusive(checkpoint, "the scores"):
        loaded = common.load(model, dtype.value, world.device(device), device_map)
        common.warn_foreign_probes(probe_list, loaded.spec.name)
        started = time.time()
        with render.progress(f"scoring {loaded.spec.name}", len(select)) as advance:
            art = scoring.score_probes(
                loaded,
                probe_list,
                config,
                select=select,
                checkpoint=checkpoint,
                on_probe=lambda _r: advance(),
                extra_meta=shard_meta,
            )
        art = world.gather(art, wanted)
        seconds = time.time() - started
        world.close()
        if not world.is_main:
            return
        save_scores(target, art)
        scoring.remove_checkpoints(target)
    _report(art, target, seconds, (splits, bootstrap, seed), as_json)


def _report(art: ScoreArtifact, target: Path, seconds: float, resampling: tuple[int, int, int], as_json: bool) -> None:
    """Probes counted per kind, the top heads of the main score with bootstrap intervals, split-half agreement."""
    from headprof.heads import top_heads
    from headprof.reliability import artifact_reliability

    counts = art.counts()
    method = art.default_method
    top = top_heads(art.scores(method), 10)
    reliability = artifact_reliability(art, *resampling)
    if not as_json:
        render.scores_written(art.meta.get("mode"), counts, method, reliability, target, seconds)
        return
    render.emit(
        {
            "artifact": str(target),
            "probes_total": sum(c["total"] for c in counts.values()),
            "probes_counted": sum(c["counted"] for c in counts.values()),
            "per_kind": counts,
            "mode": art.meta.get("mode"),
            "span": art.meta.get("params", {}).get("span"),
            "seconds": round(seconds, 2),
            "method": method,
            "top_heads": top,
            "reliability": {m: _without_values(r) for m, r in reliability.items()},
        }
    )


def _without_values(report: dict) -> dict:
    """The reliability report without the per-split values (they are for figures)."""
    return {key: value for key, value in report.items() if key != "split_half_values"}
