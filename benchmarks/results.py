"""Regenerate benchmarks/RESULTS.md and the README figures for the embedded model.

    python benchmarks/results.py               # about 1.5 hours on 2 CPU cores; results are cached
    python benchmarks/results.py --plots-only  # redraw docs/accuracy*.png from the cached results, no model

1. the evaluation probe set headprof/data/reference/smollm2-135m/eval-probes.jsonl (8 evaluation
   needles, disjoint from the scoring needles, x 1024/2048 tokens x depths 25/75), built if missing
   (run from a checkout: it writes into the package's reference folder, which is committed);
2. every method x budget 64/128/256/512 (window 32), exact match and KV bytes -> table,
   docs/accuracy.png, docs/accuracy-needles.png; and every method again with window 8 at
   32/64/128/256, to show what a window that no longer reaches the question does;
3. head ablation, a dose-response: the top 1/2/5/10% of heads by r2 mean-ablated vs 10 random sets of
   as many heads matched per layer -> table and docs/ablation.png;
4. how much the scores depend on the needles: split-half agreement over 200 random needle-balanced
   splits (median, 5th percentile) of the teacher and generate references, and built-in vs another
   haystack (/usr/share/common-licenses, or --haystack PATH);
5. docs/heads-r2.png, the reference artifact's r2 heatmap, and docs/heads-r2-reliability.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from headprof import ablation as A
from headprof import evaluation as E
from headprof import plots, workspace
from headprof.artifacts import load_scores
from headprof.cli.render_eval import result_cells
from headprof.fileio import write_text_atomic
from headprof.heads import rank_agreement
from headprof.intervals import bootstrap_interval
from headprof.models import load_model
from headprof.probes import build_probes, load_needles, load_probes, write_probes
from headprof.reliability import artifact_reliability
from headprof.scoring import ScoreConfig, score_probes
from headprof.tasks import RulerConfig, TaskSource

MODEL = "smollm2-135m"
REFERENCE = workspace.reference_file(MODEL, "scores.safetensors")
GENERATE_REFERENCE = workspace.reference_file(MODEL, "scores-generate.safetensors")
EVAL_PROBES = workspace.reference_file(MODEL, "eval-probes.jsonl")
EVAL_CACHE = workspace.eval_cache_file(MODEL)
RESULTS_JSON = Path("benchmarks/results.json")
# The main sweep's per-item results (one EvalRecord per line): what the needle figure is drawn from.
RECORDS_JSONL = Path("benchmarks/results-records.jsonl")
METHODS = ("full", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv", "kvzip")


def _table(results: list[dict], budgets: list[int], methods: tuple[str, ...] = METHODS) -> str:
    rows = result_cells(results, methods, budgets, lambda r: f"{r['accuracy']:.2f} ({r['kv_bytes'] / 2**20:.1f} MiB)")
    header = ["| method | " + " | ".join(f"B={b}" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    return "\n".join(header + ["| " + " | ".join(row) + " |" for row in rows])


def _ruler(
    loaded, reference, lengths: tuple[int, ...], samples: int, budgets: list[int], max_new_tokens: int, batched: bool
) -> dict:
    """RULER's synthetic suite (every task, `samples` per task and length) under every method x budget: the mean
    task score (RULER's string match, in percent) per configuration and length, with a 95% bootstrap interval
    over the items."""
    rows, skipped = TaskSource.parse("ruler", RulerConfig(lengths=lengths, samples=samples)).load(
        loaded.tokenizer, loaded.info.max_context
    )
    items = E.items_from_rows(loaded.tokenizer, rows, loaded.info.max_context, max_new_tokens)
    config = E.EvalConfig(METHODS, tuple(budgets), max_new_tokens=max_new_tokens, decode_together=batched)
    records = E.evaluate(loaded, items, config, reference, EVAL_CACHE)
    table = []
    for method in METHODS:
        for budget in (None,) if method == "full" else budgets:
            for length in lengths:
                scores = [100 * r.score for r in records if (r.method, r.budget, r.length) == (method, budget, length)]
                low, high = bootstrap_interval(scores)
                mean = sum(scores) / len(scores)
                table.append(
                    dict(method=method, budget=budget, length=length, score=mean, low=low, high=high, n=len(scores))
                )
    return {
        "rows": table,
        "tasks": sorted({r.task for r in records}),
        "skipped": skipped,
        "samples": samples,
        "max_new_tokens": max_new_tokens,
        "lengths": list(lengths),
    }


def _ruler_table(ruler: dict) -> str:
    lengths = ruler["lengths"]
    header = ["| method | " + " | ".join(f"{n} tokens" for n in lengths) + " |", "|---" + "|---:" * len(lengths) + "|"]
    cells: dict[tuple, list[str]] = {}
    for r in ruler["rows"]:
        name = r["method"] if r["budget"] is None else f"{r['method']} B={r['budget']}"
        cells.setdefault(name, []).append(f"{r['score']:.1f} [{r['low']:.1f}, {r['high']:.1f}]")
    return "\n".join(header + [f"| {name} | " + " | ".join(row) + " |" for name, row in cells.items()])


def _window8(small: list[dict], budgets: list[int]) -> str:
    if not small:
        return (
            "The window-8 table (the PyramidKV and HeadKV code's window, where the observation window no longer "
            'reaches the question) was left out of this run to keep it near an hour (`--small-window-budgets ""`); '
            "`python benchmarks/results.py` without that option adds it."
        )
    return f"""The same probes with a window of 8 (the setting of the PyramidKV and HeadKV code), which allows
B=32. Here the last 8 prompt tokens are the chat template's `<|im_end|>\\n<|im_start|>assistant\\n`
and the end of the instruction: the observation window no longer sees the question, so
SnapKV-style votes stop pointing at the needle. KVzip, query-agnostic (it scores entries by
reconstructing the context), does not depend on the window.

{_table(small, budgets)}"""


def _title(n_items: int, window: int) -> str:
    return f"SmolLM2-135M, {n_items} retrieval probes (1k/2k tokens), window {window}"


def plots_only() -> None:
    """Redraw the accuracy figures from the cached results, without loading the model: the accuracy figure
    from benchmarks/results.json, the needle figure only when the per-item records file is there."""
    payload = json.loads(RESULTS_JSON.read_text())
    records = []
    if RECORDS_JSONL.is_file():
        records = [E.EvalRecord(**json.loads(line)) for line in RECORDS_JSONL.read_text().splitlines() if line]
    needles = E.write_figures(
        records, payload["results"], "docs/accuracy.png", _title(payload["n_items"], payload["window"]), 128
    )
    kept = E.needles_png_path("docs/accuracy.png")
    print("wrote docs/accuracy.png" + (f" and {needles}" if needles else f" ({RECORDS_JSONL} missing: {kept} kept)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="64,128,256,512")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--small-window-budgets", default="32,64,128,256")
    parser.add_argument("--haystack", default="/usr/share/common-licenses")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--ablate-top", default="1%,2%,5%,10%")
    parser.add_argument("--ablation-probes", type=int, default=0, help="first N 1024-token probes (0: all)")
    parser.add_argument("--ruler-lengths", default="1024,2048")
    parser.add_argument("--ruler-samples", type=int, default=1)
    parser.add_argument("--ruler-budgets", default="128,512")
    parser.add_argument("--ruler-max-new-tokens", type=int, default=48)
    parser.add_argument("--plots-only", action="store_true", help="redraw the accuracy figures from the cache")
    parser.add_argument(
        "--exact-decode", action="store_true", help="decode each configuration alone (default: batched per item)"
    )
    args = parser.parse_args()
    if args.plots_only:
        plots_only()
        return
    budgets = [int(b) for b in args.budgets.split(",")]
    started = time.time()
    loaded = load_model(MODEL, device="cpu")
    reference = load_scores(REFERENCE)
    if not EVAL_PROBES.is_file():
        needles = load_needles(workspace.eval_needle_file("retrieval"))[:8]
        write_probes(
            EVAL_PROBES,
            build_probes(
                needles, loaded.tokenizer, lengths=(1024, 2048), depths=(25, 75), tokenizer_name="smollm2-135m"
            ),
        )
    probes = load_probes(EVAL_PROBES)
    E.check_disjoint(probes, reference)
    items = E.items_from_probes(loaded.tokenizer, probes)

    batched = not args.exact_decode
    config = E.EvalConfig(METHODS, tuple(budgets), "kv", args.window, 24, decode_together=batched)
    records = E.evaluate(loaded, items, config, reference, EVAL_CACHE)
    results = E.summarize(records)
    E.write_figures(
        records,
        results,
        "docs/accuracy.png",
        _title(len(items), args.window),
        128,
    )
    write_text_atomic(RECORDS_JSONL, "".join(json.dumps(asdict(r)) + "\n" for r in records))
    small_budgets = [int(b) for b in args.small_window_budgets.split(",") if b]
    small = (
        E.summarize(
            E.evaluate(
                loaded,
                items,
                E.EvalConfig(METHODS, tuple(small_budgets), "kv", 8, 24, decode_together=batched),
                reference,
                EVAL_CACHE,
            )
        )
        if small_budgets
        else []
    )
    ruler_budgets = [int(b) for b in args.ruler_budgets.split(",")]
    ruler_lengths = tuple(int(n) for n in args.ruler_lengths.split(","))
    ruler = _ruler(
        loaded, reference, ruler_lengths, args.ruler_samples, ruler_budgets, args.ruler_max_new_tokens, batched
    )

    sizes = A.head_counts(args.ablate_top, loaded.info.n_layers * loaded.info.n_heads)
    ablation_items = [item for item in items if item.length == 1024][: args.ablation_probes or None]
    ablation = A.dose_response(
        loaded, reference, ablation_items, A.AblationConfig(sizes, args.trials, max_new_tokens=24)
    )
    plots.dose_response(
        ablation["rows"], "docs/ablation.png", f"SmolLM2-135M: mean ablation, {len(ablation_items)} probes"
    )
    reliability = {"teacher": artifact_reliability(reference)}
    if GENERATE_REFERENCE.is_file():
        reliability["generate"] = artifact_reliability(load_scores(GENERATE_REFERENCE))

    needles = [n for kind in ("retrieval", "reasoning") for n in load_needles(workspace.needle_file(kind))]
    haystack_scores = {}
    for name, source in (("builtin", "builtin"), ("other", args.haystack)):
        hay_probes = build_probes(needles, loaded.tokenizer, lengths=(1024,), depths=(50,), haystack=source)
        haystack_scores[name] = score_probes(loaded, hay_probes, ScoreConfig()).scores("r2")
    haystack = rank_agreement(haystack_scores["builtin"], haystack_scores["other"])
    title = f"SmolLM2-135M-Instruct: HeadKV r2 head scores ({len(reference.probe_ids)} teacher-forced probes)"
    plots.score_heatmap(reference.scores("r2"), "docs/heads-r2.png", title)
    plots.reliability_figure(reliability["teacher"], "docs/heads-r2-reliability.png", title)

    payload = {
        "results": results,
        "results_window8": small,
        "ruler": ruler,
        "ablation": ablation,
        "split_half": {mode: {m: r["split_half"] for m, r in reports.items()} for mode, reports in reliability.items()},
        "haystack": haystack,
        "window": args.window,
        "n_items": len(items),
        "minutes": round((time.time() - started) / 60, 1),
    }
    write_text_atomic(RESULTS_JSON, json.dumps(payload, indent=1) + "\n")
    dose = "\n".join(
        f"| {r['k']} ({r['share']:.0%}) | {r['top']:.2f} | {r['random_mean']:.2f} ± {r['random_sd']:.2f} | "
        f"{r['random_min']:.2f} - {r['random_max']:.2f} | {r['random_at_or_below_top']}/{len(r['random'])} |"
        for r in ablation["rows"]
    )
    halves = "\n".join(
        f"| {method}, {mode} | {r['split_half']['spearman_median']:.3f} | {r['split_half']['spearman_p5']:.3f} | "
        f"{r['split_half']['top10_overlap_median']:.0%} |"
        for mode, reports in reliability.items()
        for method, r in reports.items()
        if r["split_half"]
    )
    decoding = (
        "its compressed caches decoded as one batch (`eval`'s default: a greedy answer can differ from a run "
        "alone where two tokens tie within float rounding)"
        if batched
        else "each configuration decoded alone"
    )
    write_text_atomic(
        "benchmarks/RESULTS.md",
        f"""# Results on the embedded model

SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32), CPU. Regenerate everything here with
`python benchmarks/results.py` (cached per method x budget x probe in
`{EVAL_CACHE}`; {payload["minutes"]} min for this run). Each item is prefilled once for all methods and
budgets and {decoding}.

## Accuracy against KV budget

{len(items)} retrieval probes from `{os.path.relpath(EVAL_PROBES)}` (evaluation needles, disjoint from the scoring
needles; 1024 and 2048 tokens, needle at 25% and 75% depth). Exact match: the normalised gold
answer occurs in the greedy answer (24 new tokens). Cells: accuracy (mean KV cache at the end of
generation). Window {args.window}, KV-head layout (`--gqa kv`), kernel 7 max pooling; HeadKV
budgets from `{os.path.relpath(REFERENCE)}` (r2, beta 1.2).

{_table(results, budgets)}

![accuracy vs KV bytes](../docs/accuracy.png)

{_window8(small, small_budgets)}

![accuracy by length and depth](../docs/accuracy-needles.png)

## RULER

RULER's synthetic tasks ({len(ruler["tasks"])}: {", ".join(ruler["tasks"])}), generated offline by
`headprof tasks build` from the built-in haystack, {ruler["samples"]} sample(s) per task and length, under every
method (window 32, KV-head layout) at B={", ".join(str(b) for b in ruler_budgets)}. Cells: the mean RULER
string-match score in percent over the tasks, [95% bootstrap interval over the items, 1000 draws]. Answers are
capped at {ruler["max_new_tokens"]} new tokens (RULER allows up to 128 for the needle tasks) to keep the run within
the hour on 2 cores.{" Skipped: " + "; ".join(ruler["skipped"]) if ruler["skipped"] else ""}

{_ruler_table(ruler)}

## Do the scores mean anything?

Mean ablation (a masked head outputs its mean output over the measured prompts) of the top-k heads
by r2 vs {args.trials} random sets of k heads drawn outside the top set, matched per layer, on the same
{ablation["n_items"]} probes of 1024 tokens, no compression; nothing masked: {ablation["baseline"]:.2f}.

| heads masked | top k by r2 | random k (mean ± sd) | random min - max | random <= top |
|---|---|---|---|---|
{dose}

![dose-response](../docs/ablation.png)

How much the scores depend on the needles: Spearman over all {ablation["heads_total"]} heads between the
scores of two disjoint needle halves, over 200 random needle-balanced splits (a reasoning needle's two
polarities stay together), and the top-10 overlap:

| score, mode | median | 5th percentile | top-10 overlap (median) |
|---|---|---|---|
{halves}

r2, built-in haystack vs {args.haystack} ({len(needles)} needles, 1024 tokens, depth 50): Spearman
{haystack["spearman"]:.3f}, top-10 overlap {haystack["top10_overlap"]:.0%}.

![r2 head scores](../docs/heads-r2.png)
![split halves and bootstrap intervals](../docs/heads-r2-reliability.png)
""",
    )
    print(Path("benchmarks/RESULTS.md").read_text())


if __name__ == "__main__":
    main()
