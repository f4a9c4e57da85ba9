"""Summaries of evaluation records: accuracy and KV bytes per method x budget with needle-cluster intervals, paired
differences against HeadKV on the same items, task scores, figure data."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headprof.evaluation.records import EvalRecord
from headprof.intervals import method_estimates, paired_against, wilson_interval
from headprof.runtime.methods import METHODS

if TYPE_CHECKING:
    from headprof.plots import AccuracyPoint


def summarize(records: Iterable[EvalRecord]) -> list[dict[str, Any]]:
    """One row per method x budget: accuracy (exact match) with its 95% needle-cluster bootstrap `interval` and
    the number of `clusters` it rests on (a needle's probes at every length and depth are one cluster: their
    outcomes are nearly all-or-none per needle; a task row is its own), token F1, mean KV bytes, n; when task
    items are among the records, also `tasks` (per task, and per length for RULER, the task metric in percent,
    2 decimals, as RULER and LongBench report it) and `score` (the mean of those task scores)."""
    records = list(records)
    groups: dict[tuple[str, int | None], list[EvalRecord]] = defaultdict(list)
    for record in records:
        groups[(record.method, record.budget)].append(record)
    estimates = method_estimates(records)
    out = []
    for (method, budget), rows in groups.items():
        n = len(rows)
        estimate = estimates[(method, budget)]
        summary: dict[str, Any] = {
            "method": method,
            "budget": budget,
            "accuracy": sum(r.exact for r in rows) / n,
            "interval": [round(estimate.low, 4), round(estimate.high, 4)],
            "clusters": estimate.clusters,
            "f1": sum(r.f1 for r in rows) / n,
            "kv_bytes": round(sum(r.kv_bytes for r in rows) / n),
            "kv_bytes_full": round(sum(r.kv_bytes_full for r in rows) / n),
            "n": n,
        }
        tasks = task_scores(rows)
        if tasks:
            summary["tasks"] = tasks
            summary["score"] = round(sum(t["score"] for t in tasks) / len(tasks), 2)
        out.append(summary)
    return out


def eval_report(model_id: str, records: Sequence[EvalRecord], n_items: int, png: str | Path | None = None) -> dict:
    """What an evaluation reports: the model, the item count, the `summarize` rows and, when HeadKV is among the
    methods, `paired`: HeadKV minus each other method at the same budget on the same items, with needle-cluster
    intervals (`intervals.paired_against`; the full cache pairs with every budget); with `png`, the figures
    (`write_figures`) are drawn and their paths listed under `png`."""
    results = summarize(records)
    payload: dict[str, Any] = {"model": model_id, "n_items": n_items, "results": results}
    if any(r.method == "headkv" for r in records):
        payload["paired"] = paired_against(records, "headkv")
    if png:
        needles = write_figures(records, results, png, model_id)
        payload["png"] = [str(png)] + ([str(needles)] if needles else [])
    return payload


def task_scores(records: Iterable[EvalRecord]) -> list[dict[str, Any]]:
    """Task metric per task (and per target length for RULER rows) in percent, in first-seen order."""
    groups: dict[tuple[str, int | None], list[float]] = defaultdict(list)
    for r in records:
        if r.score is not None:
            groups[(r.task, r.length if r.kind == "ruler" else None)].append(r.score)
    return [
        {"task": task, "length": length, "score": round(100 * sum(v) / len(v), 2), "n": len(v)}
        for (task, length), v in groups.items()
    ]


def accuracy_points(results: Sequence[dict[str, Any]]) -> dict[str, list[AccuracyPoint]]:
    """Figure points per method from `summarize` rows (or the same rows read back from a results file), each
    with its row's needle-cluster `interval`; rows without one (results files written before it) get the 95%
    Wilson interval over their `n` items, which treats items as independent."""
    from headprof.plots import AccuracyPoint

    points: dict[str, list[AccuracyPoint]] = defaultdict(list)
    for r in results:
        interval = tuple(r["interval"]) if "interval" in r else wilson_interval(round(r["accuracy"] * r["n"]), r["n"])
        points[r["method"]].append(AccuracyPoint(r["kv_bytes"], r["accuracy"], r["budget"], interval))
    return points


def write_figures(
    records: Sequence[EvalRecord],
    results: Sequence[dict[str, Any]],
    png: str | Path,
    title: str,
    grid_budget: int | None = None,
) -> Path | None:
    """Accuracy vs KV bytes (one line per method, full cache as reference, 95% needle-cluster interval bars) at `png`,
    and a length x depth needle heatmap per method at `<png>-needles.png` (at `grid_budget`, default the middle
    budget) when `records` hold needle probes; returns that heatmap's path (None: none written)."""
    from headprof import plots

    png = Path(png)
    curves = accuracy_points(results)
    full = curves.pop("full", [None])[0]
    sizes = sorted({r.get("clusters", r["n"]) for r in results})
    note = f"bars: 95% bootstrap interval resampling whole needles ({'/'.join(map(str, sizes))} clusters)"
    plots.accuracy_vs_bytes(curves, full, png, f"{title}: accuracy vs KV cache", note)
    budgets = sorted({r.budget for r in records if r.budget is not None})
    chosen = grid_budget if grid_budget is not None else (budgets[len(budgets) // 2] if budgets else None)
    grids, lengths, depths = {}, [], []
    for method in dict.fromkeys(r.method for r in records):
        rows = [r for r in records if r.method == method and r.budget in (None, chosen) and r.depth is not None]
        if rows:
            label = f"{method} B={chosen}" if METHODS[method].compresses else method
            lengths, depths, grids[label] = needle_grid(rows)
    if not grids:  # no needle probes (task rows only): no heatmap
        return None
    needles_png = needles_png_path(png)
    plots.needle_grids(grids, lengths, depths, needles_png, f"{title}: accuracy by length x depth")
    return needles_png


def needles_png_path(png: str | Path) -> Path:
    """Where `write_figures` puts the length x depth heatmap next to the accuracy plot."""
    png = Path(png)
    return png.with_name(png.stem + "-needles" + png.suffix)


def needle_grid(records: Iterable[EvalRecord]) -> tuple[list[int], list[float], torch.Tensor]:
    """Accuracy by depth (rows) x context length (columns) for records of one method and budget."""
    rows = [r for r in records if r.depth is not None]
    lengths = sorted({r.length for r in rows})
    depths = sorted({float(r.depth) for r in rows})
    hits, counts = torch.zeros(len(depths), len(lengths)), torch.zeros(len(depths), len(lengths))
    for r in rows:
        i, j = depths.index(float(r.depth)), lengths.index(r.length)
        hits[i, j] += float(r.exact)
        counts[i, j] += 1
    return lengths, depths, hits / counts.clamp(min=1)
