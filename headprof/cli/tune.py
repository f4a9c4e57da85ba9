"""`headprof tune`: pick an allocation policy and its parameters per budget on validation probes, report the pick
on disjoint test probes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import common, progress, render, render_eval
from headprof.cli.options import INTS, DeviceOpt, Dtype, DtypeOpt, JsonOpt, ModelOpt, numbers


def tune(
    validation: Annotated[
        Path,
        typer.Option(
            metavar="<path>",
            help="Probes the candidates are ranked on (`probes build --generated --split validation`).",
        ),
    ],
    test: Annotated[
        Path,
        typer.Option(
            metavar="<path>", help="Probes the picks are reported on, other needles (`--generated --split test`)."
        ),
    ],
    budgets: Annotated[str, typer.Option(metavar=INTS, help="Mean per-head budgets to tune.")] = "32,64",
    model: ModelOpt = "smollm2-135m",
    scores: Annotated[
        Path | None, typer.Option(help="Score artifact; default: the workspace's scores, else the packaged ones.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Answer length in tokens.")] = 24,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", help="Where alloc-b<B>-tuned.safetensors go; default: <workdir>/<model>/."),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the JSON report to this file.")] = None,
    dtype: DtypeOpt = Dtype.auto,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Search policies x parameters (tune.grid: HeadKV's beta, the duo split's top-head count, the layer floor, the
    retrieval/r2 mix, the window) on validation probes, pick per budget, and report the picks, HeadKV as published
    and the full cache on the test probes, every column at exactly uniform B's bytes, with needle-clustered
    intervals. The picks are written as allocation artifacts that record what they were tuned and tested on."""
    from headprof import tune as T
    from headprof import workspace
    from headprof.artifacts import load_scores, save_alloc
    from headprof.evaluation import items_from_probes, read_inputs
    from headprof.fileio import sha256_file, write_text_atomic
    from headprof.validation import check_outputs

    config = T.TuneConfig(tuple(numbers(budgets, "--budgets")), max_new_tokens)
    config.validate()
    source = scores or common.default_input(model, workspace.scores_file(model), "scores")
    folder = out_dir or workspace.model_dir(model)
    targets = {b: folder / f"alloc-b{b}-tuned.safetensors" for b in config.budgets}
    outputs = [(f"artifact for B={b}", path) for b, path in targets.items()] + [("--report", report)]
    check_outputs(outputs, [source, validation, test])
    validation_probes, test_probes = read_inputs([validation]), read_inputs([test])
    T.check_splits(validation_probes, test_probes)
    art = load_scores(source)
    common.check_before_loading(model, config.budgets, [("score artifact", art)])
    loaded = common.load(model, dtype.value, device)

    def split(path: Path, probes: list) -> T.ProbeSplit:
        return T.ProbeSplit(probes, items_from_probes(loaded.tokenizer, probes), str(path), sha256_file(path))

    splits = split(validation, validation_probes), split(test, test_probes)
    with progress.bar("tuning", len(validation_probes) + len(test_probes)) as advance:
        result = T.tune(loaded, art, source, *splits, config, lambda name, total: advance)
    for budget, path in targets.items():
        save_alloc(path, result.artifacts[budget])
    payload = render.finite(result.payload() | {"artifacts": {str(b): str(p) for b, p in targets.items()}})
    if report:
        import json

        write_text_atomic(report, json.dumps(payload, indent=1) + "\n")
    if as_json:
        render.emit(payload)
    else:
        render_eval.tune_report(payload)
