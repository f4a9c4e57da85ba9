"""`headprof eval` and `headprof ablate`: what compression costs, and whether head scores mean anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from headprof.cli import common, progress, render, render_eval
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
    MethodOptionOpt,
    ModelOpt,
    Pooling,
    PoolingOpt,
    ScoreMethod,
    choice,
    numbers,
)
from headprof.runtime.methods import METHODS

if TYPE_CHECKING:
    from headprof.artifacts import AllocArtifact, ScoreArtifact
    from headprof.evaluation.run import EvalConfig
    from headprof.models.loading import LoadedModel
    from headprof.probes import Probe
    from headprof.tasks import TaskSource
    from headprof.tasks.rows import TaskRow

ALL_METHODS = ",".join(METHODS)  # registry order: the full cache first


# eval's options (module-level, so that the command's signature stays a list of names).
MethodsOpt = Annotated[str, typer.Option(metavar=f"<{ALL_METHODS.replace(',', '|')},...>", help="Methods.")]
BudgetsOpt = Annotated[str, typer.Option(metavar=INTS, help="Per-head budgets (each above the window).")]
EvalProbesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        metavar="<path>",
        help="Evaluation probe JSONL (repeatable); default without --task: the model's eval-probes.jsonl.",
    ),
]
TaskOpt = Annotated[
    str | None,
    typer.Option(
        metavar="<ruler|ruler:TASK,...|path>",
        help="ruler | ruler:TASK[,TASK] (generated RULER tasks) or a LongBench-layout JSONL file.",
    ),
]
LengthsOpt = Annotated[str, typer.Option(metavar=INTS, help="RULER: lengths in tokens (prompt + answer).")]
SamplesOpt = Annotated[int, typer.Option(help="RULER: samples per task and length.")]
RulerSeedOpt = Annotated[int, typer.Option(help="RULER: generation seed.")]
HaystackOpt = Annotated[
    str, typer.Option(metavar="<builtin|path>", help="RULER essay haystack: 'builtin' or a text file / folder.")
]
MaxLengthOpt = Annotated[
    int | None, typer.Option(help="Task files: prompt + answer limit in tokens (default: the model's window).")
]
EvalScoresOpt = Annotated[Path | None, typer.Option(help="Score artifact for headkv; default: the model's scores.")]
EvalAllocOpt = Annotated[
    list[Path] | None,
    typer.Option(
        metavar="<path>",
        help="Allocation artifact (repeatable): a column of its own at its budget, run by HeadKV's selection, "
        "named by its policy.",
    ),
]
ReferenceBytesOpt = Annotated[
    bool,
    typer.Option(
        "--reference-bytes",
        help="Spend bytes as each method's reference code does (HeadKV's budgets above the prompt unspent, "
        "KVzip's question on top of its budget); default: every column at exactly uniform B's bytes.",
    ),
]
GqaOpt = Annotated[Gqa, choice(Gqa, GQA_MESSAGE, "Cache layout.")]
WindowOpt = Annotated[
    int, typer.Option(help="Observation window, kept in every head; it must reach back to the question.")
]
MaxNewTokensOpt = Annotated[
    int | None, typer.Option(help="Answer length; default: the task's own (RULER, LongBench), 32 for probes.")
]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache", help="Results cache; default: <workdir>/<model>/eval-cache.jsonl.")
]
EvalPngOpt = Annotated[Path | None, typer.Option(help="Accuracy-vs-KV-bytes plot; a needle heatmap goes next to it.")]
ReportOpt = Annotated[Path | None, typer.Option(help="Also write the JSON report to this file.")]
PerConfigOpt = Annotated[
    bool,
    typer.Option(
        "--per-config",
        help="Prefill each item again for every method x budget (default: one shared prefill; same answers).",
    ),
]
DecodeAloneOpt = Annotated[
    bool,
    typer.Option(
        "--decode-alone",
        help="Decode each method x budget's cache alone after the shared prefill: token for token a single run, "
        "slower (default: the caches of several items decoded as one batch; a greedy answer can differ from a "
        "run alone at a rounding-level tie).",
    ),
]
BatchDecodeOpt = Annotated[
    bool, typer.Option("--batch-decode", hidden=True, help="The default now; kept for old scripts.")
]


def eval_(
    model: ModelOpt = "smollm2-135m",
    methods: MethodsOpt = ALL_METHODS,
    budgets: BudgetsOpt = "64,128,256,512",
    probes: EvalProbesOpt = None,
    task: TaskOpt = None,
    lengths: LengthsOpt = "1024",
    samples: SamplesOpt = 2,
    seed: RulerSeedOpt = 42,
    haystack: HaystackOpt = "builtin",
    max_length: MaxLengthOpt = None,
    scores: EvalScoresOpt = None,
    alloc: EvalAllocOpt = None,
    reference_bytes: ReferenceBytesOpt = False,
    gqa: GqaOpt = Gqa.kv,
    window: WindowOpt = 32,
    kernel: KernelOpt = 7,
    pooling: PoolingOpt = Pooling.max,
    method_option: MethodOptionOpt = None,
    max_new_tokens: MaxNewTokensOpt = None,
    cache_file: CacheOpt = None,
    png: EvalPngOpt = None,
    report: ReportOpt = None,
    per_config: PerConfigOpt = False,
    decode_alone: DecodeAloneOpt = False,
    batch_decode: BatchDecodeOpt = False,
    dtype: DtypeOpt = Dtype.auto,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Accuracy against budget and KV bytes, for every method x budget on probes, RULER tasks or a task file;
    tasks are also scored with their own metric (RULER string match, each LongBench dataset's metric)."""
    from headprof import evaluation as E
    from headprof import workspace
    from headprof.errors import HeadprofError, UsageError
    from headprof.fileio import exclusive, write_text_atomic
    from headprof.validation import no_duplicates

    method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
    budget_list = tuple(numbers(budgets, "--budgets"))
    no_duplicates(method_list, "--methods")
    no_duplicates(budget_list, "--budgets")
    if batch_decode and (decode_alone or per_config):
        raise UsageError("--batch-decode decodes a sweep's caches together: not with --decode-alone or --per-config")
    config = E.EvalConfig(
        *(method_list, budget_list, gqa.value, window, 32 if max_new_tokens is None else max_new_tokens),
        *(kernel, pooling.value),
        sweep=not per_config,
        decode_together=not (decode_alone or per_config),
        method_options=tuple(method_option or ()),
        equal_bytes=not reference_bytes,
    )
    config.validate()
    if max_length is not None and max_length < 1:
        raise HeadprofError("--max-length must be a positive number of tokens")
    source = _task_source(task, lengths, samples, seed, haystack) if task else None
    cache_path = cache_file or workspace.eval_cache_file(model)
    outputs = (cache_path, report, png)
    probe_list, scores_art, allocations = _eval_inputs(model, config, source, probes, scores, alloc or [], outputs)
    loaded = common.load(model, dtype.value, device)
    common.warn_foreign_probes(probe_list, loaded.spec.name)
    rows = _task_rows(source, loaded) if source else []
    items = E.collect_items(loaded, probe_list, rows, scores_art, max_new_tokens, max_length)
    total = len(items) * (len(config.configurations()) + len(allocations))
    render.notice(
        f"{total} answers to compute ({len(items)} items x {total // max(len(items), 1)} method-budget configurations; "
        "cached ones are skipped); the time per item shows after the first (fewer: --methods, --budgets, --probes)"
    )
    with exclusive(cache_path, "the results cache"), progress.bar("evaluating", total) as advance:
        records = E.evaluate(loaded, items, config, scores_art, cache_path, lambda _r: advance(), allocations)
    payload = render.finite(E.eval_report(loaded.info.model_id, records, len(items), png))  # strict JSON too
    if report:
        write_text_atomic(report, json.dumps(payload, indent=1, allow_nan=False) + "\n")
    if as_json:
        render.emit(payload)
        return
    budgets_shown = sorted({*budget_list, *(int(a.meta.get("budget", 0)) for _, a in allocations)} - {0})
    render_eval.eval_tables(payload, [*method_list, *(label for label, _ in allocations)], budgets_shown)
    for written in [*payload.get("png", []), *([str(report)] if report else [])]:
        render.line(f"wrote {written}")


def _task_source(task: str, lengths: str, samples: int, seed: int, haystack: str) -> TaskSource:
    """What `--task` names, with the RULER options (used only when it names RULER tasks)."""
    from headprof.tasks import RulerConfig, TaskSource

    ruler = RulerConfig(lengths=tuple(numbers(lengths, "--lengths")), samples=samples, seed=seed, haystack=haystack)
    return TaskSource.parse(task, ruler)


def _task_rows(source: TaskSource, loaded: LoadedModel) -> list[TaskRow]:
    """The task's rows, in the model's tokenizer and window; what was left out is said as a notice."""
    rows, notices = source.load(loaded.tokenizer, loaded.info.max_context)
    for message in notices:
        render.notice(message)
    return rows


def _eval_inputs(
    model: str,
    config: EvalConfig,
    source: TaskSource | None,
    probes: list[Path] | None,
    scores: Path | None,
    alloc_files: list[Path],
    outputs: tuple[Path, Path | None, Path | None],
) -> tuple[list[Probe], ScoreArtifact | None, list[tuple[str, AllocArtifact]]]:
    """Everything `eval` can refuse before the model loads: RULER lengths beyond its window, the probes (and
    their needles against the scores'), the outputs (`outputs`: results cache, report, figure), the budgets and
    allocation artifacts, an edited results cache; the probes, the score artifact (default: the model's, when a
    method needs scores or it exists) and each allocation with its column label."""
    from headprof import evaluation as E
    from headprof import workspace
    from headprof.artifacts import load_alloc, load_scores
    from headprof.validation import check_outputs, no_duplicates

    cache_path, report, png = outputs
    if source and source.ruler:
        from headprof.models.loading import model_info

        source.ruler.validate(model_info(model).max_context)
    probe_files = probes or ([] if source else [common.default_eval_probes(model)])
    probe_list = E.read_inputs(probe_files)
    default_scores = workspace.find_input(model, workspace.scores_file(model)).path
    needs_scores = any(METHODS[m].needs_scores for m in config.methods)
    if not scores and (needs_scores or default_scores.is_file()):  # also checks needle overlap
        scores = common.default_input(model, workspace.scores_file(model), "scores")
    needles_png = E.needles_png_path(png) if png else None
    no_duplicates([str(Path(f).resolve()) for f in alloc_files], "--alloc")
    check_outputs(
        [("--cache", cache_path), ("--report", report), ("--png", png), ("the needle heatmap", needles_png)],
        [*probe_files, *(source.inputs if source else ()), scores, *alloc_files],
    )
    allocations: list[tuple[str, AllocArtifact]] = []
    for path in alloc_files:
        art = load_alloc(path)
        allocations.append((E.alloc_label(art, [label for label, _ in allocations]), art))
    scores_art = load_scores(scores) if scores else None
    if scores_art is not None:
        E.check_disjoint(probe_list, scores_art)
    checked = [("score artifact", scores_art), *((f"allocation {p}", a) for p, (_, a) in zip(alloc_files, allocations))]
    common.check_before_loading(model, config.budgets, checked)
    E.ResultCache.open(cache_path)
    return probe_list, scores_art, allocations


# ablate's options.
AblateScoresOpt = Annotated[Path | None, typer.Option(help="Score artifact; default: the model's scores.")]
AblateProbesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        metavar="<path>",
        help="Probe JSONL to measure retrieval on (repeatable); default: the model's eval-probes.jsonl.",
    ),
]
TopOpt = Annotated[
    str,
    typer.Option(
        metavar="<percent%|count,...>", help="Heads to mask, comma-separated: percents of all heads (5%) or counts."
    ),
]
AblationOpt = Annotated[
    Ablation, choice(Ablation, "unknown ablation '{value}' ({choices})", "mean: a masked head outputs its mean; zero.")
]
RankOpt = Annotated[ScoreMethod, choice(ScoreMethod, SCORE_METHOD_MESSAGE, "Score that ranks heads.")]
CompareOpt = Annotated[
    Path | None, typer.Option(help="Another score artifact (e.g. from another haystack) to rank-correlate with.")
]


def ablate(
    model: ModelOpt = "smollm2-135m",
    scores: AblateScoresOpt = None,
    probes: AblateProbesOpt = None,
    top: TopOpt = "1%,2%,5%,10%",
    random_trials: Annotated[int, typer.Option(help="Random head sets per head count.")] = 20,
    ablation: AblationOpt = Ablation.mean,
    method: RankOpt = ScoreMethod.r2,
    compare: CompareOpt = None,
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
    with progress.bar("ablating", len(items) * A.passes(config)) as advance:
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
        render_eval.ablation(result, compare)
