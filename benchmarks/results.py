"""Regenerate benchmarks/RESULTS.md, its per-item records and the README figures for the embedded model.

    python benchmarks/results.py               # the full run (about 90 minutes on 2 CPU cores); results are cached
    python benchmarks/results.py --quick       # a smoke test of every step in a few minutes, written to
                                               # headprof-out/results-quick/ (never over the committed results)
    python benchmarks/results.py --plots-only  # redraw the accuracy figures and RESULTS.md from results.json (and
                                               # policies.json), no model

1. evaluation probes from generated needles (`headprof.needlegen`, the `test` split: fact templates, names,
   values and haystack of no scoring needle), `--needles` needles x `--lengths` x depths 25/75;
2. every method x budget on them: exact match with needle-cluster bootstrap intervals (whole needles
   resampled), mean kept KV bytes (the figure puts bytes on the x-axis), and HeadKV minus every other method
   on the same items at the same budget with cluster-bootstrap intervals;
3. RULER's synthetic tasks with RULER's own answer lengths, `--ruler-samples` per task and length, intervals
   and paired differences the same way (each generated row is its own cluster);
4. head ablation: the top `--ablate-top` heads by r2 mean-ablated vs `--trials` random sets matched per layer on
   one 1024-token probe of each of `--ablation-needles` needles, with a permutation p-value per k;
5. how much the scores depend on the needles (split halves) and, with `--haystack-check`, on the haystack;
6. every table's per-item records next to RESULTS.md (`results-records*.jsonl`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from headprof import ablation as A
from headprof import evaluation as E
from headprof import needlegen, plots, workspace
from headprof.artifacts import load_scores
from headprof.fileio import write_text_atomic
from headprof.heads import rank_agreement
from headprof.intervals import (
    DEFAULT_RESAMPLES,
    cluster_bootstrap,
    method_estimates,
    needle_cluster,
    paired_against,
)
from headprof.models import load_model
from headprof.probes import build_probes, load_needles
from headprof.reliability import artifact_reliability
from headprof.scoring import ScoreConfig, score_probes
from headprof.tasks import RulerConfig, TaskSource

MODEL = "smollm2-135m"
REFERENCE = workspace.reference_file(MODEL, "scores.safetensors")
GENERATE_REFERENCE = workspace.reference_file(MODEL, "scores-generate.safetensors")
EVAL_CACHE = workspace.eval_cache_file(MODEL)
METHODS = ("full", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv", "kvzip")
PAIRED_WITH = "headkv"


@dataclass(frozen=True)
class Sizes:
    """How much one run measures; the full size is chosen to fit about 90 minutes on 2 cores (see FULL)."""

    needles: int
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    budgets: tuple[int, ...]
    methods: tuple[str, ...]
    small_window_budgets: tuple[int, ...]
    ruler_tasks: tuple[str, ...]
    ruler_lengths: tuple[int, ...]
    ruler_samples: int
    ruler_budgets: tuple[int, ...]
    ruler_methods: tuple[str, ...]
    ablation_needles: int
    trials: int
    ablate_top: str
    haystack_check: bool


# Sized from a timed small run (process CPU time: the wall time of this single-threaded run on 2 idle cores; the
# machine was shared when measured, wall 2-4x longer). Per probe at 1024 tokens: full cache 3.9 s, SnapKV/PyramidKV/
# AdaKV/HeadKV at 3 budgets 3.6 s more, KVzip at 3 budgets 6.6 s more; at 2048 tokens 7.0, 4.3 and 21.7 s. Estimate:
# needles 63 min (160 probes), RULER 13 min (80 rows, no KVzip), ablation 13 min (1.8 s per probe and mask, 440),
# split halves 1 min: about 90 min. Left out to fit: StreamingLLM and H2O (near 0 at every budget of the earlier
# runs), B=512 (every method near the full cache there), 4096-token probes, the window-8 table, KVzip and
# PyramidKV on RULER and RULER's other tasks, the haystack check.
FULL = Sizes(
    needles=40,
    lengths=(1024, 2048),
    depths=(25.0, 75.0),
    budgets=(64, 128, 256),
    methods=("full", "snapkv", "pyramidkv", "adakv", "headkv", "kvzip"),
    small_window_budgets=(),
    ruler_tasks=("niah_single_2", "niah_multikey_1", "vt", "cwe"),
    ruler_lengths=(1024, 2048),
    ruler_samples=10,
    ruler_budgets=(128,),
    ruler_methods=("full", "snapkv", "adakv", "headkv"),
    ablation_needles=10,
    trials=20,
    ablate_top="2%,5%",
    haystack_check=False,
)
QUICK = Sizes(
    needles=3,
    lengths=(512, 1024),
    depths=(25.0, 75.0),
    budgets=(64, 128),
    methods=("full", "snapkv", "headkv"),
    small_window_budgets=(),
    ruler_tasks=("niah_single_2", "vt"),
    ruler_lengths=(1024,),
    ruler_samples=2,
    ruler_budgets=(128,),
    ruler_methods=("full", "snapkv", "headkv"),
    ablation_needles=2,
    trials=3,
    ablate_top="2%",
    haystack_check=False,
)


@dataclass(frozen=True)
class Paths:
    """Where a run writes: RESULTS.md, results.json and the records in `out`, figures in `figures`."""

    out: Path
    figures: Path

    @property
    def results_md(self) -> Path:
        return self.out / "RESULTS.md"

    @property
    def results_json(self) -> Path:
        return self.out / "results.json"

    def records(self, table: str = "") -> Path:
        """Per-item records of one table: `results-records.jsonl` (the needle sweep), `-<table>` for the others."""
        return self.out / f"results-records{'-' + table if table else ''}.jsonl"

    def figure(self, name: str) -> Path:
        return self.figures / name

    def link(self, name: str) -> str:
        """A figure's path relative to RESULTS.md, for its links."""
        return os.path.relpath(self.figure(name), self.out)


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def _write_records(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def _statistics(records: Sequence[E.EvalRecord], value: str) -> dict[str, Any]:
    """Per method x budget: mean with its cluster-bootstrap interval and mean kept bytes; and PAIRED_WITH minus
    every other method at each budget on the same items (intervals.method_estimates / paired_against)."""

    def get(r: E.EvalRecord) -> float:
        return float(r.exact) if value == "exact" else float(r.score or 0.0)

    estimates = method_estimates(records, get)
    kv: dict[tuple[str, int | None], list[int]] = {}
    for r in records:
        kv.setdefault((r.method, r.budget), []).append(r.kv_bytes)
    rows = [
        {"method": m, "budget": b, **est.to_dict(), "kv_bytes": round(sum(kv[(m, b)]) / len(kv[(m, b)]))}
        for (m, b), est in estimates.items()
    ]
    paired = paired_against(records, PAIRED_WITH, get) if any(r.method == PAIRED_WITH for r in records) else []
    return {"rows": rows, "paired": paired, "value": value}


def _cells(stats: dict[str, Any], methods: Sequence[str], budgets: Sequence[int], scale: float = 1.0) -> str:
    """Accuracy [95% cluster interval] (mean kept MiB) per method x budget; a column line giving the spread of
    mean kept bytes among the compressed methods (columns are budgets, not equal bytes)."""
    by = {(r["method"], r["budget"]): r for r in stats["rows"]}
    fmt = "{:.2f}" if scale == 1 else "{:.0f}"
    header = ["| method | " + " | ".join(f"B={b}" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    lines = []
    for method in methods:
        cells = []
        for budget in budgets:
            r = by.get((method, None if method == "full" else budget))
            if r is None:
                cells.append("")
                continue
            v, lo, hi = (fmt.format(scale * r[k]) for k in ("value", "low", "high"))
            cells.append(f"{v} [{lo}, {hi}] ({_mib(r['kv_bytes'])})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    spread = []
    for budget in budgets:
        kept = [r["kv_bytes"] for (m, b), r in by.items() if b == budget]
        spread.append(f"{min(kept) / max(kept):.2f}" if kept else "")
    lines.append("| *min/max kept bytes* | " + " | ".join(spread) + " |")
    return "\n".join(header + lines)


def _paired_cells(stats: dict[str, Any], methods: Sequence[str], budgets: Sequence[int], scale: float = 1.0) -> str:
    """PAIRED_WITH minus each method at each budget [95% cluster interval], with PAIRED_WITH's kept bytes over the
    other's: a difference means most where that ratio is near 1."""
    by = {(r["method"], r["budget"]): r for r in stats["rows"]}
    diffs = {(r["method"], r["budget"]): r for r in stats["paired"]}
    fmt = "{:+.2f}" if scale == 1 else "{:+.0f}"
    header = ["| method | " + " | ".join(f"B={b}" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    lines = []
    for method in methods:
        if method == PAIRED_WITH:
            continue
        cells = []
        for budget in budgets:
            d, ref = diffs.get((method, budget)), by.get((PAIRED_WITH, budget))
            other = by.get((method, None if method == "full" else budget))
            if d is None or ref is None or other is None:
                cells.append("")
                continue
            v, lo, hi = (fmt.format(scale * d[k]) for k in ("value", "low", "high"))
            cells.append(f"{v} [{lo}, {hi}] (bytes x{ref['kv_bytes'] / other['kv_bytes']:.2f})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(header + lines)


def _accuracy_figure(stats: dict[str, Any], path: Path, title: str, n_needles: int) -> None:
    """Accuracy against mean kept KV bytes, one line per method, bars the needle-cluster intervals."""
    curves: dict[str, list[plots.AccuracyPoint]] = {}
    for r in sorted(stats["rows"], key=lambda r: (r["method"], r["budget"] or 0)):
        curves.setdefault(r["method"], []).append(
            plots.AccuracyPoint(r["kv_bytes"], r["value"], r["budget"], (r["low"], r["high"]))
        )
    full = curves.pop("full", [None])[0]
    note = f"bars: 95% bootstrap interval resampling whole needles ({n_needles} needles); x: mean kept KV bytes"
    plots.accuracy_vs_bytes(curves, full, path, f"{title}: accuracy vs KV cache", note)


def _needle_figure(records: Sequence[E.EvalRecord], path: Path, title: str, budget: int) -> None:
    grids, lengths, depths = {}, [], []
    for method in dict.fromkeys(r.method for r in records):
        rows = [r for r in records if r.method == method and r.budget in (None, budget)]
        label = method if method == "full" else f"{method} B={budget}"
        lengths, depths, grids[label] = E.needle_grid(rows)
    plots.needle_grids(grids, lengths, depths, path, f"{title}: accuracy by length x depth")


def _ruler(loaded, reference, sizes: Sizes, batched: bool) -> tuple[dict[str, Any], list[E.EvalRecord]]:
    """The RULER tasks with their own answer lengths under `sizes.ruler_methods` x budgets: the mean string-match
    score in percent per configuration (and per length) with cluster intervals and paired differences."""
    config = RulerConfig(lengths=sizes.ruler_lengths, samples=sizes.ruler_samples)
    source = TaskSource.parse("ruler:" + ",".join(sizes.ruler_tasks), config)
    rows, skipped = source.load(loaded.tokenizer, loaded.info.max_context)
    items = E.items_from_rows(loaded.tokenizer, rows, loaded.info.max_context)  # each task's tokens_to_generate
    eval_config = E.EvalConfig(sizes.ruler_methods, sizes.ruler_budgets, decode_together=batched)
    records = E.evaluate(loaded, items, eval_config, reference, EVAL_CACHE)
    overall = _statistics(records, "score")
    by_length = {n: _statistics([r for r in records if r.length == n], "score") for n in sizes.ruler_lengths}
    tasks = sorted({r.task for r in records})
    by_task = {t: _statistics([r for r in records if r.task == t], "score") for t in tasks}
    return {
        "overall": overall,
        "by_length": {str(n): s for n, s in by_length.items()},
        "by_task": by_task,
        "tasks": tasks,
        "skipped": skipped,
        "samples": sizes.ruler_samples,
        "lengths": list(sizes.ruler_lengths),
        "n_items": len(items),
    }, records


def _ruler_columns(ruler: dict[str, Any], key: str, labels: dict[str, str]) -> str:
    """RULER scores in percent [95% interval] per configuration (rows) and length or task (columns)."""
    header = ["| method | " + " | ".join(labels.values()) + " |", "|---" + "|---:" * len(labels) + "|"]
    cells: dict[str, list[str]] = {}
    for column in labels:
        for r in ruler[key][column]["rows"]:
            name = r["method"] if r["budget"] is None else f"{r['method']} B={r['budget']}"
            cells.setdefault(name, []).append(f"{100 * r['value']:.0f} [{100 * r['low']:.0f}, {100 * r['high']:.0f}]")
    return "\n".join(header + [f"| {name} | " + " | ".join(row) + " |" for name, row in cells.items()])


def _ablation_records(ablation: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per item x mask: nothing masked, the top-k set, each random k-set."""
    rows = [
        {"mask": "none", "k": 0, "trial": None, "item": i, "right": h}
        for i, h in zip(ablation["items"], ablation["baseline_hits"])
    ]
    for r in ablation["rows"]:
        rows += [
            {"mask": "top", "k": r["k"], "trial": None, "item": i, "right": h}
            for i, h in zip(ablation["items"], r["top_hits"])
        ]
        for t, hits in enumerate(r["random_hits"]):
            rows += [
                {"mask": "random", "k": r["k"], "trial": t, "item": i, "right": h}
                for i, h in zip(ablation["items"], hits)
            ]
    return rows


def _supported(stats: dict[str, Any], budgets: Sequence[int], unit: str = "") -> str:
    """What the paired intervals support, per budget: the methods HeadKV answers more than, fewer than, and
    those it cannot be told apart from on these items (the interval holds 0)."""
    lines = []
    for budget in budgets:
        pairs = [r for r in stats["paired"] if r["budget"] == budget and r["method"] != "full"]
        above = [r["method"] for r in pairs if r["low"] > 0]
        below = [r["method"] for r in pairs if r["high"] < 0]
        tied = [r["method"] for r in pairs if r["low"] <= 0 <= r["high"]]
        full = next((r for r in stats["paired"] if r["method"] == "full" and r["budget"] == budget), None)
        parts = [f"above {', '.join(above)}" if above else "", f"below {', '.join(below)}" if below else ""]
        parts.append(f"not told apart from {', '.join(tied)}" if tied else "")
        if full is not None:
            verdict = "above" if full["low"] > 0 else "below" if full["high"] < 0 else "not told apart from"
            parts.append(f"{verdict} the full cache")
        lines.append(f"- B={budget}{unit}: HeadKV is " + "; ".join(p for p in parts if p) + ".")
    return "\n".join(lines)


def _share_of_full(correct: dict[str, int], full: dict[str, int]) -> str:
    """A column's accuracy over the full cache's on the same items, with a 95% interval that resamples whole
    needles (`cluster_bootstrap` of the ratio of totals): the issue's targets are stated as this share."""
    items = list(full)
    share = cluster_bootstrap(
        [correct[i] for i in items], [needle_cluster(i) for i in items], weights=[full[i] for i in items]
    )
    return f"{share.value:.0%} [{share.low:.0%}, {share.high:.0%}]"


def _policies(path: Path) -> str:
    """Issue 25's table from `benchmarks/policies.py --out` (test accuracy of the full cache, HeadKV as
    published and each policy's best candidate on validation, per budget), or a line saying it is missing."""
    if not path.is_file():
        return f"No policy run: `{path.name}` is missing (`benchmarks/policies.py --out {path}` makes it)."
    payload = json.loads(path.read_text())
    blocks = []
    for budget, block in sorted(payload["budgets"].items(), key=lambda kv: int(kv[0])):
        full = block["test"][0]["accuracy"]
        lines = [
            f"B={budget}: {len(block['validation'])} candidates; picked on validation: `{block['pick']}` "
            f"({block['pick_validation_accuracy']:.2f} there).",
            "",
            "| column | test accuracy [95% CI] | share of full [95% CI] | minus HeadKV published [95% CI] | KV MiB |",
            "|---|---|---:|---|---:|",
        ]
        for row in block["test"]:
            low, high = row["interval"]
            diff = "-"
            if "vs_headkv" in row:
                d_low, d_high = row["vs_headkv_interval"]
                diff = f"{row['vs_headkv']:+.2f} [{d_low:+.2f}, {d_high:+.2f}]"
            tag = " **(pick)**" if row["pick"] else (" (published)" if row["published"] else "")
            share = _share_of_full(row["correct"], block["test"][0]["correct"]) if full else "-"
            lines.append(
                f"| {row['name']}{tag} | {row['accuracy']:.2f} [{low:.2f}, {high:.2f}] | {share} | {diff} | "
                f"{row['kv_bytes'] / 2**20:.2f} |"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _title(n_items: int, n_needles: int, lengths: Sequence[int], window: int) -> str:
    tokens = "/".join(map(str, lengths))
    return f"SmolLM2-135M, {n_items} probes of {n_needles} generated needles ({tokens} tokens), window {window}"


def plots_only(paths: Paths, args: argparse.Namespace) -> None:
    """Redraw the accuracy figures and rewrite RESULTS.md from results.json, the needle records and
    policies.json, without loading the model (a text or policy-table change needs no rerun)."""
    payload = json.loads(paths.results_json.read_text())
    _accuracy_figure(payload["needles"], paths.figure("accuracy.png"), payload["title"], payload["n_needles"])
    records = [E.EvalRecord(**json.loads(line)) for line in paths.records().read_text().splitlines() if line]
    _needle_figure(records, paths.figure("accuracy-needles.png"), payload["title"], payload["grid_budget"])
    sizes = Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["sizes"].items()})
    batched = payload.get("batched", not args.exact_decode)
    write_text_atomic(paths.results_md, _markdown(payload, sizes, paths, args, batched))
    print(f"wrote {paths.figure('accuracy.png')}, {paths.figure('accuracy-needles.png')} and {paths.results_md}")


def _sizes(args: argparse.Namespace) -> Sizes:
    """FULL or QUICK, with any size given on the command line replacing its value."""
    sizes = QUICK if args.quick else FULL
    for f in fields(Sizes):
        given = getattr(args, f.name, None)
        if given is None:
            continue
        if f.name in ("needles", "ruler_samples", "ablation_needles", "trials"):
            sizes = replace(sizes, **{f.name: int(given)})
        elif f.name in ("methods", "ruler_methods", "ruler_tasks"):
            sizes = replace(sizes, **{f.name: tuple(x for x in given.split(",") if x)})
        elif f.name == "ablate_top":
            sizes = replace(sizes, ablate_top=given)
        elif f.name == "haystack_check":
            sizes = replace(sizes, haystack_check=True)
        else:
            cast = float if f.name == "depths" else int
            sizes = replace(sizes, **{f.name: tuple(cast(x) for x in given.split(",") if x)})
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke test of every step (minutes)")
    parser.add_argument("--out", type=Path, help="where RESULTS.md, results.json and records go")
    parser.add_argument("--figures", type=Path, help="where the figures go")
    for f in fields(Sizes):
        if f.name != "haystack_check":
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, help=f"default: {getattr(FULL, f.name)}")
    parser.add_argument("--haystack-check", action="store_true", default=None, help="r2 on another haystack too")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--haystack", default="/usr/share/common-licenses")
    parser.add_argument("--plots-only", action="store_true", help="redraw figures and RESULTS.md, no model")
    parser.add_argument("--exact-decode", action="store_true", help="decode each configuration alone")
    args = parser.parse_args()
    default_out = Path("headprof-out/results-quick") if args.quick else Path("benchmarks")
    # figures beside the results for --quick or --out, in docs/ (the README's) for the committed results
    figures = args.figures or args.out or (default_out if args.quick else Path("docs"))
    paths = Paths(args.out or default_out, figures)
    if args.plots_only:
        plots_only(paths, args)
        return
    sizes = _sizes(args)
    paths.out.mkdir(parents=True, exist_ok=True)
    paths.figures.mkdir(parents=True, exist_ok=True)
    started, timings = time.time(), {}
    loaded = load_model(MODEL, device="cpu")
    reference = load_scores(REFERENCE)
    batched = not args.exact_decode

    # 1-2. generated needles, every method x budget
    clock = time.time()
    probes = needlegen.build_eval_probes(
        loaded.tokenizer, "test", sizes.needles, sizes.lengths, sizes.depths, tokenizer_name=MODEL
    )
    E.check_disjoint(probes, reference)
    items = E.items_from_probes(loaded.tokenizer, probes)
    config = E.EvalConfig(sizes.methods, sizes.budgets, "kv", args.window, 24, decode_together=batched)
    records = E.evaluate(loaded, items, config, reference, EVAL_CACHE)
    needles = _statistics(records, "exact")
    title = _title(len(items), sizes.needles, sizes.lengths, args.window)
    grid_budget = sizes.budgets[len(sizes.budgets) // 2]
    _accuracy_figure(needles, paths.figure("accuracy.png"), title, sizes.needles)
    _needle_figure(records, paths.figure("accuracy-needles.png"), title, grid_budget)
    _write_records(paths.records(), [asdict(r) for r in records])
    small = []
    if sizes.small_window_budgets:
        small_config = replace(config, budgets=sizes.small_window_budgets, window=8)
        small_records = E.evaluate(loaded, items, small_config, reference, EVAL_CACHE)
        small = [_statistics(small_records, "exact")]
        _write_records(paths.records("window8"), [asdict(r) for r in small_records])
    timings["needles"] = time.time() - clock

    # 3. RULER
    clock = time.time()
    ruler, ruler_records = _ruler(loaded, reference, sizes, batched)
    _write_records(paths.records("ruler"), [asdict(r) for r in ruler_records])
    timings["ruler"] = time.time() - clock

    # 4. ablation on one probe per needle (1024 tokens, else the shortest; the first depth) of the first needles:
    # a needle's probes are nearly one outcome, so one each measures as much for a fraction of the passes
    clock = time.time()
    shortest = min(sizes.lengths, key=lambda n: (n != 1024, n))
    kept_needles = list(dict.fromkeys(p.needle_id for p in probes))[: sizes.ablation_needles]
    ablation_items = [
        i for i in items if i.length == shortest and i.depth == sizes.depths[0] and needle_cluster(i.id) in kept_needles
    ]
    heads = A.head_counts(sizes.ablate_top, loaded.info.n_layers * loaded.info.n_heads)
    ablation = A.dose_response(
        loaded, reference, ablation_items, A.AblationConfig(heads, sizes.trials, max_new_tokens=24)
    )
    _write_records(paths.records("ablation"), _ablation_records(ablation))
    plots.dose_response(
        ablation["rows"],
        paths.figure("ablation.png"),
        f"SmolLM2-135M: mean ablation, {len(ablation_items)} probes of {ablation['n_needles']} needles",
    )
    timings["ablation"] = time.time() - clock

    # 5. reliability
    clock = time.time()
    reliability = {"teacher": artifact_reliability(reference)}
    if GENERATE_REFERENCE.is_file():
        reliability["generate"] = artifact_reliability(load_scores(GENERATE_REFERENCE))
    haystack = None
    if sizes.haystack_check:
        scoring_needles = [n for kind in ("retrieval", "reasoning") for n in load_needles(workspace.needle_file(kind))]
        haystack_scores = {}
        for name, source in (("builtin", "builtin"), ("other", args.haystack)):
            hay_probes = build_probes(scoring_needles, loaded.tokenizer, lengths=(1024,), depths=(50,), haystack=source)
            haystack_scores[name] = score_probes(loaded, hay_probes, ScoreConfig()).scores("r2")
        haystack = rank_agreement(haystack_scores["builtin"], haystack_scores["other"])
    heatmap_title = f"SmolLM2-135M-Instruct: HeadKV r2 head scores ({len(reference.probe_ids)} teacher-forced probes)"
    plots.score_heatmap(reference.scores("r2"), paths.figure("heads-r2.png"), heatmap_title)
    plots.reliability_figure(reliability["teacher"], paths.figure("heads-r2-reliability.png"), heatmap_title)
    timings["reliability"] = time.time() - clock

    payload = {
        "sizes": asdict(sizes),
        "title": title,
        "grid_budget": grid_budget,
        "needles": needles,
        "needles_window8": small,
        "ruler": ruler,
        "ablation": {k: v for k, v in ablation.items() if k not in ("items", "baseline_hits")}
        | {"rows": [{k: v for k, v in r.items() if not k.endswith("_hits")} for r in ablation["rows"]]},
        "split_half": {mode: {m: r["split_half"] for m, r in reports.items()} for mode, reports in reliability.items()},
        "haystack": haystack,
        "window": args.window,
        "batched": batched,
        "n_items": len(items),
        "n_needles": sizes.needles,
        "minutes": round((time.time() - started) / 60, 1),
        "minutes_by_step": {k: round(v / 60, 1) for k, v in timings.items()},
    }
    write_text_atomic(paths.results_json, json.dumps(payload, indent=1) + "\n")
    write_text_atomic(paths.results_md, _markdown(payload, sizes, paths, args, batched))
    print(paths.results_md.read_text())


def _markdown(payload: dict[str, Any], sizes: Sizes, paths: Paths, args: argparse.Namespace, batched: bool) -> str:
    ablation, ruler, needles = payload["ablation"], payload["ruler"], payload["needles"]
    dose = "\n".join(
        f"| {r['k']} ({r['share']:.0%}) | {r['top']:.2f} [{r['top_interval']['low']:.2f}, "
        f"{r['top_interval']['high']:.2f}] | {r['random_mean']:.2f} ± {r['random_sd']:.2f} | "
        f"{r['random_min']:.2f} - {r['random_max']:.2f} | {r['random_at_or_below_top']}/{len(r['random'])} | "
        f"{r['p_value']:.3f} |"
        for r in ablation["rows"]
    )
    halves = "\n".join(
        f"| {method}, {mode} | {r['spearman_median']:.3f} | {r['spearman_p5']:.3f} | {r['top10_overlap_median']:.0%} |"
        for mode, reports in payload["split_half"].items()
        for method, r in reports.items()
        if r
    )
    haystack = payload["haystack"]
    haystack_line = (
        f"r2, built-in haystack vs {args.haystack} (the scoring needles, 1024 tokens, depth 50): Spearman "
        f"{haystack['spearman']:.3f}, top-10 overlap {haystack['top10_overlap']:.0%}."
        if haystack
        else "The built-in vs other haystack comparison was left out of this run."
    )
    decoding = (
        "its compressed caches decoded as one batch (`eval`'s default: a greedy answer can differ from a run "
        "alone where two tokens tie within float rounding)"
        if batched
        else "each configuration decoded alone"
    )
    window8 = (
        "Window 8 (the PyramidKV and HeadKV code's window):\n\n"
        + _cells(payload["needles_window8"][0], sizes.methods, sizes.small_window_budgets)
        if payload["needles_window8"]
        else "The window-8 table was left out of this run (`--small-window-budgets 32,64,128,256` adds it)."
    )
    skipped = " Skipped: " + "; ".join(ruler["skipped"]) + "." if ruler["skipped"] else ""
    left_out_ruler = sorted(set(METHODS) - set(sizes.ruler_methods))
    steps = ", ".join(f"{k} {v} min" for k, v in payload["minutes_by_step"].items())
    return f"""# Results on the embedded model

SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32), CPU. Regenerate everything here with
`python benchmarks/results.py` (cached per method x budget x item in `{EVAL_CACHE}`; {payload["minutes"]} min
for this run: {steps}). Each item is prefilled once for all methods and budgets and {decoding}. Every table's
per-item records are next to this file (`{paths.records().name}`, `{paths.records("ruler").name}`,
`{paths.records("ablation").name}`): every number here recomputes from them.

Intervals are 95% percentile bootstrap intervals that resample whole needles (a needle's probes at every
length and depth are one cluster: their outcomes are nearly all-or-none), {DEFAULT_RESAMPLES} resamples
(`headprof.intervals.cluster_bootstrap`).

## Accuracy against KV budget

{payload["n_items"]} probes of {sizes.needles} evaluation needles generated from fact templates
(`headprof/needlegen.py`, split `test`: topics, names, values and haystack of no scoring needle), at
{"/".join(map(str, sizes.lengths))} tokens, needle at {"/".join(f"{d:g}" for d in sizes.depths)}% depth. Exact
match: the normalised gold answer occurs in the greedy answer (24 new tokens). Cells: accuracy [95% needle-cluster
interval] (mean KV cache kept at the end of generation). Each column spends uniform B's bytes (`eval`'s default:
HeadKV's heads capped at the prompt hand their budget on, KVzip's question counts against its budget); the last
row gives the smallest over the largest mean kept bytes in each column (they differ by the answers' own tokens);
the figure puts bytes on the x-axis. Window
{payload["window"]}, KV-head layout (`--gqa kv`), kernel 7 max pooling; HeadKV budgets from
`headprof/data/reference/{MODEL}/scores.safetensors` (r2, beta 1.2).

{_cells(needles, sizes.methods, sizes.budgets)}

![accuracy vs KV bytes]({paths.link("accuracy.png")})

HeadKV minus each method on the same items at the same budget [95% needle-cluster interval] (HeadKV's mean
kept bytes over the other method's): an interval above 0 says HeadKV answers more of these needles; read it
together with the byte ratio.

{_paired_cells(needles, sizes.methods, sizes.budgets)}

What these intervals support (an interval that holds 0 tells the two apart on nothing here):

{_supported(needles, sizes.budgets)}

{window8}

![accuracy by length and depth]({paths.link("accuracy-needles.png")})

## RULER

RULER's synthetic tasks ({len(ruler["tasks"])}: {", ".join(ruler["tasks"])}), generated offline by
`headprof tasks build` from the built-in haystack, {ruler["samples"]} samples per task and length
({ruler["n_items"]} items), each task answering in RULER's own `tokens_to_generate` (niah 128, vt 30, cwe 120,
fwe 50), under {", ".join(sizes.ruler_methods)} (window 32, KV-head layout) at
B={", ".join(str(b) for b in sizes.ruler_budgets)}; left out to fit the run: {", ".join(left_out_ruler) or "none"}
and RULER's other tasks.{skipped} Cells: RULER's string-match score in percent [95% bootstrap interval over the
items, each generated row its own cluster].

By length:

{_ruler_columns(ruler, "by_length", {str(n): f"{n} tokens" for n in ruler["lengths"]})}

By task, all lengths together ({len(ruler["lengths"]) * ruler["samples"]} rows per task):

{_ruler_columns(ruler, "by_task", {t: t for t in ruler["tasks"]})}

All lengths together, and HeadKV minus each method on the same rows:

{_cells(ruler["overall"], sizes.ruler_methods, sizes.ruler_budgets, scale=100)}

{_paired_cells(ruler["overall"], sizes.ruler_methods, sizes.ruler_budgets, scale=100)}

{_supported(ruler["overall"], sizes.ruler_budgets, " (RULER)")}

## Do the scores mean anything?

Mean ablation (a masked head outputs its mean output over the measured prompts) of the top-k heads by r2 vs
{sizes.trials} random sets of k heads drawn outside the top set, matched per layer, on {ablation["n_items"]}
probes of {ablation["n_needles"]} needles, no compression; nothing masked: {ablation["baseline"]:.2f}. p: one-sided
permutation p-value, (1 + random sets at or below the top set) / (1 + sets); its floor is
{1 / (sizes.trials + 1):.3f}.

| heads masked | top k by r2 [95% interval] | random k (mean ± sd) | random min - max | random <= top | p |
|---|---|---|---|---|---|
{dose}

![dose-response]({paths.link("ablation.png")})

How much the scores depend on the needles: Spearman over all {ablation["heads_total"]} heads between the
scores of two disjoint needle halves, over 200 random needle-balanced splits (a reasoning needle's two
polarities stay together), and the top-10 overlap:

| score, mode | median | 5th percentile | top-10 overlap (median) |
|---|---|---|---|
{halves}

{haystack_line}

## Allocation policies at 2-5% of the cache

Every policy from the same r2 scores at exactly uniform B's bytes (HeadKV's selection with `spill`), tuned on
a validation split and reported on a disjoint test split by `headprof tune` (`benchmarks/policies.py`; METHOD.md
§3): 20 generated needles x 2 depths of about 1.5k tokens per split (`probes build --generated --split
validation|test --count 40 --lengths 1536`, the first 20 needles of each), 24 new tokens. Rows: the full
cache, HeadKV's pool as published (beta 1.2, window 32; 8 below B=64), and each policy's best candidate on
validation; the pick is the best of all on validation. Intervals resample whole needles (20 clusters);
differences are paired on the same items. Per-item outcomes: `{paths.out.name}/policies.json` (`correct`).

{_policies(paths.out / "policies.json")}

![r2 head scores]({paths.link("heads-r2.png")})
![split halves and bootstrap intervals]({paths.link("heads-r2-reliability.png")})
"""


if __name__ == "__main__":
    main()
