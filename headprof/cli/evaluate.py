"""`headprof eval` and `headprof ablate`: what compression costs, and whether head scores mean anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import common, render
from headprof.cli.options import (
    GQA_MESSAGE,
    INTS,
    SCORE_METHOD_MESSAGE,
    Ablation,
    DeviceOpt,
    Dtype,
    DtypeOpt,
    Gqa,
    JsonOpt,
    KernelOpt,
    ModelOpt,
    Pooling,
    PoolingOpt,
    ScoreMethod,
    choice,
    numbers,
)
from headprof.runtime.methods import METHODS

ALL_METHODS = ",".join(METHODS)  # registry order: the full cache first


def eval_(
    model: ModelOpt = "smollm2-135m",
    methods: Annotated[
        str, typer.Option(metavar=f"<{ALL_METHODS.replace(',', '|')},...>", help="Methods.")
    ] = ALL_METHODS,
    budgets: Annotated[
        str, typer.Option(metavar=INTS, help="Per-head budgets (each above the window).")
    ] = "64,128,256,512",
    probes: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="<path>",
            help="Evaluation probe JSONL (repeatable); default without --task: the model's eval-probes.jsonl.",
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            metavar="<ruler|ruler:TASK,...|path>",
            help="ruler | ruler:TASK[,TASK] (generated RULER tasks) or a LongBench-layout JSONL file.",
        ),
    ] = None,
    lengths: Annotated[str, typer.Option(metavar=INTS, help="RULER: lengths in tokens (prompt + answer).")] = "1024",
    samples: Annotated[int, typer.Option(help="RULER: samples per task and length.")] = 2,
    seed: Annotated[int, typer.Option(help="RULER: generation seed.")] = 42,
    haystack: Annotated[
        str, typer.Option(metavar="<builtin|path>", help="RULER essay haystack: 'builtin' or a text file / folder.")
    ] = "builtin",
    max_length: Annotated[
        int | None, typer.Option(help="Task files: prompt + answer limit in tokens (default: the model's window).")
    ] = None,
    scores: Annotated[Path | None, typer.Option(help="Score artifact for headkv; default: the model's scores.")] = None,
    alloc: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="<path>",
            help="Allocation artifact (repeatable): a column of its own at its budget, run by HeadKV's selection, "
            "named by its policy.",
        ),
    ] = None,
    reference_bytes: Annotated[
        bool,
        typer.Option(
            "--reference-bytes",
            help="Spend bytes as each method's reference code does (HeadKV's budgets above the prompt unspent, "
            "KVzip's question on top of its budget); default: every column at exactly uniform B's bytes.",
        ),
    ] = False,
    gqa: Annotated[Gqa, choice(Gqa, GQA_MESSAGE, "Cache layout.")] = Gqa.kv,
    window: Annotated[
        int, typer.Option(help="Observation window, kept in every head; it must reach back to the question.")
    ] = 32,
    kernel: KernelOpt = 7,
    pooling: PoolingOpt = Pooling.max,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Answer length; default: the task's own (RULER, LongBench), 32 for probes.")
    ] = None,
    cache_file: Annotated[
        Path | None, typer.Option("--cache", help="Results cache; default: <workdir>/<model>/eval-cache.jsonl.")
    ] = None,
    png: Annotated[
        Path | None, typer.Option(help="Accuracy-vs-KV-bytes plot; a needle heatmap goes next to it.")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the JSON report to this file.")] = None,
    per_config: Annotated[
        bool,
        typer.Option(
            "--per-config",
            help="Prefill each item again for every method x budget (default: one shared prefill; same answers).",
        ),
    ] = False,
    batch_decode: Annotated[
        bool,
        typer.Option(
            "--batch-decode",
            help="Decode an item's compressed caches as one batch: faster; a greedy answer can differ at a "
            "rounding-level tie from a run alone.",
        ),
    ] = False,
    dtype: DtypeOpt = Dtype.auto,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Accuracy against budget and KV bytes, for every method x budget on probes, RULER tasks or a task file;
    tasks are also scored with their own metric (RULER string match, each LongBench dataset's metric)."""
    from headprof import evaluation as E
    from headprof import workspace
    from headprof.artifacts import load_alloc, load_scores
    from headprof.errors import HeadprofError
    from headprof.fileio import exclusive, write_text_atomic
    from headprof.tasks import RulerConfig, TaskSource
    from headprof.validation import check_outputs, no_duplicates

    method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
    budget_list = tuple(numbers(budgets, "--budgets"))
    no_duplicates(method_list, "--methods")
    no_duplicates(budget_list, "--budgets")
    config = E.EvalConfig(
        method_list,
        budget_list,
        gqa.value,
        window,
        32 if max_new_tokens is None else max_new_tokens,
        kernel,
        pooling.value,
        sweep=not per_config,
        batch_decode=batch_decode,
        equal_bytes=not reference_bytes,
    )
    config.validate()
    if max_length is not None and max_length < 1:
        raise HeadprofError("--max-length must be a positive number of tokens")
    ruler = RulerConfig(lengths=tuple(numbers(lengths, "--lengths")), samples=samples, seed=seed, haystack=haystack)
    source = TaskSource.parse(task, ruler) if task else None
    if source and source.ruler:  # lengths beyond the model's window fail now, not after it loads
        from headprof.models.loading import model_info

        source.ruler.validate(model_info(model).max_context)
    probe_files = probes or ([] if task else [common.default_eval_probes(model)])
    probe_list = E.read_inputs(probe_files)
    default_scores = workspace.find_input(model, workspace.scores_file(model)).path
    if not scores and ("headkv" in method_list or default_scores.is_file()):  # also checks needle overlap
        scores = common.default_input(model, workspace.scores_file(model), "scores")
    cache_path = cache_file or workspace.eval_cache_file(model)
    needles_png = E.needles_png_path(png) if png else None
    alloc_files = list(alloc or [])
    no_duplicates([str(Path(f).resolve()) for f in alloc_files], "--alloc")
    check_outputs(
        [("--cache", cache_path), ("--report", report), ("--png", png), ("the needle heatmap", needles_png)],
        [*probe_files, *(source.inputs if source else ()), scores, *alloc_files],
    )
    allocations: list = []  # (label, AllocArtifact)
    for path in alloc_files:
        art = load_alloc(path)
        allocations.append((E.alloc_label(art, [label for label, _ in allocations]), art))
    scores_art = load_scores(scores) if scores else None
    if scores_art is not None:
        E.check_disjoint(probe_list, scores_art)  # before the model loads
    checked = [("score artifact", scores_art)] + [(f"allocation {p}", a) for p, (_, a) in zip(alloc_files, allocations)]
    common.check_before_loading(model, budget_list, checked)
    E.ResultCache.open(cache_path)  # an edited results cache is refused now, not after the model loads
    loaded = common.load(model, dtype.value, device)
    common.warn_foreign_probes(probe_list, loaded.spec.name)
    rows: list = []
    if source:
        rows, notices = source.load(loaded.tokenizer, loaded.info.max_context)
        for message in notices:
            render.notice(message)
    items = E.collect_items(loaded, probe_list, rows, scores_art, max_new_tokens, max_length)
    n_configs = sum(1 if m == "full" else len(budget_list) for m in method_list) + len(allocations)
    total = len(items) * n_configs
    render.notice(
        f"{total} answers to compute ({len(items)} items x {n_configs} method-budget configurations; cached "
        "ones are skipped); the time per item shows after the first (fewer: --methods, --budgets, --probes)"
    )
    with exclusive(cache_path, "the results cache"), render.progress("evaluating", total) as advance:
        records = E.evaluate(
            loaded, items, config, scores_art, cache_path, on_result=lambda _r: advance(), allocations=allocations
        )
    results = E.summarize(records)
    payload = {"model": loaded.info.model_id, "n_items": len(items), "results": results}
    if png:
        needles = E.write_figures(records, results, png, loaded.info.model_id)
        payload["png"] = [str(png)] + ([str(needles)] if needles else [])
    payload = render.finite(payload)  # the report is strict JSON too: a NaN after all that work is not a crash
    if report:
        write_text_atomic(report, json.dumps(payload, indent=1, allow_nan=False) + "\n")
    if as_json:
        render.emit(payload)
        return
    rows = [*method_list, *(label for label, _ in allocations)]
    columns = sorted({*budget_list, *(int(a.meta.get("budget", 0)) for _, a in allocations)} - {0})
    cells = E.result_cells(results, rows, columns, lambda r: f"{r['accuracy']:.2f} / {r['kv_bytes'] / 2**20:.2f}")
    render.accuracy_table(len(items), columns, cells)
    if any("tasks" in r for r in results):
        header, task_rows = E.task_cells(results, method_list, budget_list)
        render.task_table(header, task_rows)
    for written in [*payload.get("png", []), *([str(report)] if report else [])]:
        render.line(f"wrote {written}")


def ablate(
    model: ModelOpt = "smollm2-135m",
    scores: Annotated[Path | None, typer.Option(help="Score artifact; default: the model's scores.")] = None,
    probes: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="<path>",
            help="Probe JSONL to measure retrieval on (repeatable); default: the model's eval-probes.jsonl.",
        ),
    ] = None,
    top: Annotated[
        str,
        typer.Option(
            metavar="<percent%|count,...>",
            help="Heads to mask, comma-separated: percents of all heads (5%) or counts.",
        ),
    ] = "1%,2%,5%,10%",
    random_trials: Annotated[int, typer.Option(help="Random head sets per head count.")] = 10,
    ablation: Annotated[
        Ablation,
        choice(Ablation, "unknown ablation '{value}' ({choices})", "mean: a masked head outputs its mean; zero."),
    ] = Ablation.mean,
    method: Annotated[
        ScoreMethod, choice(ScoreMethod, SCORE_METHOD_MESSAGE, "Score that ranks heads.")
    ] = ScoreMethod.r2,
    compare: Annotated[
        Path | None, typer.Option(help="Another score artifact (e.g. from another haystack) to rank-correlate with.")
    ] = None,
    png: Annotated[Path | None, typer.Option(help="Dose-response figure: accuracy against heads masked.")] = None,
    seed: int = 0,
    max_new_tokens: int = 32,
    dtype: DtypeOpt = Dtype.auto,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Mask the top-k heads by score, and k random heads matched per layer, and compare retrieval accuracy."""
    from headprof import ablation as A
    from headprof import evaluation as E
    from headprof import workspace
    from headprof.artifacts import check_model, load_scores
    from headprof.errors import HeadprofError
    from headprof.heads import rank_agreement
    from headprof.reliability import artifact_reliability
    from headprof.validation import check_outputs

    probe_files = probes or [common.default_eval_probes(model)]
    probe_list = E.read_inputs(probe_files)
    scores = scores or common.default_input(model, workspace.scores_file(model), "scores")
    check_outputs([("--png", png)], [*probe_files, scores, compare])
    score_art = load_scores(scores)
    if method.value not in score_art.per_probe:
        raise HeadprofError(f"the score artifact has no '{method.value}' scores ({', '.join(score_art.methods)})")
    sizes = A.head_counts(top, score_art.model.n_layers * score_art.model.n_heads)
    config = A.AblationConfig(sizes, random_trials, ablation.value, method.value, seed, max_new_tokens)
    config.validate()
    # Everything that needs no model runs first: a bad --compare or too few needles fail in a second.
    split_half = artifact_reliability(score_art, first=method.value)[method.value]["split_half"]
    vs_compare = None
    if compare:
        other = load_scores(compare)
        check_model(other.model, score_art.model, "comparison artifact")
        if method.value not in other.per_probe:
            raise HeadprofError(f"{compare} has no '{method.value}' scores ({', '.join(other.methods)})")
        vs_compare = rank_agreement(score_art.scores(method.value), other.scores(method.value))
    E.check_disjoint(probe_list, score_art)  # before the model loads
    loaded = common.load(model, dtype.value, device)
    check_model(score_art.model, loaded.info, "score artifact")
    common.warn_foreign_probes(probe_list, loaded.spec.name)
    items = [i for i in E.collect_items(loaded, probe_list, None, score_art, max_new_tokens) if i.kind == "retrieval"]
    if not items:
        raise HeadprofError("no retrieval probes to measure")
    with render.progress("ablating", len(items) * A.passes(config)) as advance:
        result = A.dose_response(loaded, score_art, items, config, on_item=advance)
    result["split_half"] = split_half
    if vs_compare is not None:
        result["vs_compare"] = vs_compare
    if png:
        from headprof.plots import dose_response

        title = f"{loaded.info.model_id}: {ablation.value}-ablating heads, {len(items)} retrieval probes"
        dose_response(result["rows"], png, title)
        result["png"] = str(png)
    if as_json:
        render.emit(result)
    else:
        render.ablation(result, compare)
