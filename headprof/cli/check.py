"""`headprof check`: the score drift gate for CI (exit 0: stable, 1: drift or bad input)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import common, progress, render, render_eval
from headprof.cli.options import DeviceOpt, Dtype, DtypeOpt, JsonOpt, Mode, ModelOpt, choice


def check(
    reference: Annotated[Path, typer.Argument(metavar="REFERENCE", help="The reference score artifact.")],
    model: ModelOpt = "smollm2-135m",
    probes: Annotated[
        Path | None,
        typer.Option(
            metavar="<path>",
            help="The probe set the reference was scored on; default: probes.jsonl beside it, else the model's.",
        ),
    ] = None,
    sample: Annotated[int, typer.Option(help="Probes to re-score (a deterministic sample).")] = 6,
    mode: Annotated[
        Mode | None,
        choice(Mode, "unknown mode '{value}' ({choices})", "The reference's mode, to assert it (default: taken)."),
    ] = None,
    max_row_diff: Annotated[float, typer.Option(help="Largest allowed per-probe, per-head score change.")] = 1e-3,
    min_spearman: Annotated[float, typer.Option(help="Smallest allowed Spearman of the sample's mean scores.")] = 0.99,
    min_topk: Annotated[float, typer.Option(help="Smallest allowed share of the top-10 heads kept.")] = 0.9,
    junit: Annotated[
        Path | None, typer.Option(metavar="<path>", help="Also write the result as JUnit XML (CI test reports).")
    ] = None,
    dtype: DtypeOpt = Dtype.auto,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Re-score a sample of the reference's probes with the current model and code; exit 1 if the scores moved."""
    from headprof import workspace
    from headprof.artifacts import load_scores
    from headprof.check import CheckConfig, check_scores, write_junit
    from headprof.probes import load_probes
    from headprof.validation import check_outputs

    config = CheckConfig(sample, mode.value if mode else None, max_row_diff, min_spearman, min_topk)
    config.validate()
    probe_file = probes or workspace.reference_probes(reference, model)
    check_outputs([("--junit", junit)], [reference, probe_file])
    ref = load_scores(reference)
    probe_list = load_probes(probe_file)
    loaded = common.load(model, dtype.value, device)
    with progress.status(f"re-scoring {min(sample, len(ref.probe_ids))} probes ..."):
        report = check_scores(loaded, ref, probe_list, config, name=str(reference))
    if junit:
        write_junit(report, junit)
    if as_json:
        render.emit(report.to_dict() | ({"junit": str(junit)} if junit else {}))
    else:
        render_eval.check_report(report, junit)
    if not report.passed:
        raise typer.Exit(1)
