"""What `eval`, `ablate`, `check` and `compare` print: result tables, task scores, dose-response, the drift gate.

The consoles and the one-line messages are `render.py`'s; like it, this module holds no logic beyond laying
results out (the table cells of `eval` included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from headprof.cli.render import line, mib, notice, out, printable, titled_table
from headprof.runtime.methods import METHODS

if TYPE_CHECKING:
    from headprof.check import CheckReport


def result_cells(
    results: Sequence[dict[str, Any]],
    methods: Sequence[str],
    budgets: Sequence[int],
    cell: Callable[[dict[str, Any]], str],
) -> list[list[str]]:
    """Rows `[method, cell(B1), cell(B2), ...]`; the full cache has one result, shown under every budget."""
    by = {(r["method"], r["budget"]): r for r in results}
    rows = []
    for method in methods:
        found = [by.get((method, b if METHODS[method].compresses else None)) for b in budgets]
        rows.append([method] + [cell(r) if r else "-" for r in found])
    return rows


def task_cells(
    results: Sequence[dict[str, Any]], methods: Sequence[str], budgets: Sequence[int]
) -> tuple[list[str], list[list[str]]]:
    """Task scores as a table: one row per task (x length for RULER, as RULER reports per length), one
    column per method x budget, a last row with each column's mean; "-" where a task has no result."""
    by = {(r["method"], r["budget"]): r for r in results}
    configs = [
        (method, budget)
        for method in methods
        for budget in (budgets if METHODS[method].compresses else (None,))
        if "tasks" in by.get((method, budget), {})
    ]
    keys = list(dict.fromkeys((t["task"], t["length"]) for c in configs for t in by[c]["tasks"]))
    scores = {c: {(t["task"], t["length"]): t["score"] for t in by[c]["tasks"]} for c in configs}
    rows = [
        [task + (f" @{length}" if length else "")]
        + [f"{scores[c][(task, length)]:.1f}" if (task, length) in scores[c] else "-" for c in configs]
        for task, length in keys
    ]
    rows.append(["mean"] + [f"{by[c]['score']:.1f}" for c in configs])
    header = ["task"] + [method if budget is None else f"{method} {budget}" for method, budget in configs]
    return header, rows


def eval_tables(payload: dict[str, Any], methods: Sequence[str], budgets: Sequence[int]) -> None:
    """`eval`: the accuracy table (with needle-cluster intervals), HeadKV's paired differences when it ran, and
    the task table when task items were scored by their own metric."""
    results = payload["results"]
    cells = result_cells(results, methods, budgets, _accuracy_cell)
    accuracy_table(payload["n_items"], budgets, cells)
    if payload.get("paired"):
        paired_table(payload["paired"])
    if any("tasks" in r for r in results):
        task_table(*task_cells(results, methods, budgets))


def _accuracy_cell(row: dict[str, Any]) -> str:
    low, high = row.get("interval", (row["accuracy"], row["accuracy"]))
    return f"{row['accuracy']:.2f} [{low:.2f}, {high:.2f}] / {row['kv_bytes'] / 2**20:.2f}"


def paired_table(rows: Sequence[dict[str, Any]]) -> None:
    """`eval`: HeadKV minus each method at the same budget on the same items, with needle-cluster intervals."""
    table = Table(title="HeadKV minus each method, same items (accuracy difference [95% interval, whole needles])")
    for column in ("method", "budget", "difference", "items", "clusters"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        difference = f"{r['value']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"
        table.add_row(printable(r["method"]), str(r["budget"]), difference, str(r["n"]), str(r["clusters"]))
    out.print(table)


def accuracy_table(n_items: int, budgets: Sequence[int], rows: Sequence[Sequence[str]]) -> None:
    """`eval`: accuracy / KV MiB per method (rows) and budget (columns)."""
    title = f"accuracy (exact match) [95% interval, resampling whole needles] / KV MiB, {n_items} items"
    table = Table(title=title)
    table.add_column("method")
    for budget in budgets:
        table.add_column(f"B={budget}", justify="right")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def task_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """`eval` on tasks: each task's own metric in percent (rows: task x length; columns: method budget)."""
    table = Table(title="task scores (%, each task's own metric)")
    table.add_column(header[0])
    for column in header[1:]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def ablation(result: dict[str, Any], compare: Path | None) -> None:
    """`ablate`: the dose-response table (top-k vs matched random k masked), split-half agreement."""
    title = (
        f"retrieval accuracy, {result['n_items']} probes, heads {result['ablation']}-ablated "
        f"(nothing masked: {result['baseline']:.2f}); random: {result['trials']} sets per k, matched per layer"
    )
    rows = [
        (
            f"{r['k']} ({r['share']:.0%})",
            f"{r['top']:.2f}",
            f"{r['random_mean']:.2f} ± {r['random_sd']:.2f}",
            f"{r['random_min']:.2f} - {r['random_max']:.2f}",
            f"{r['random_at_or_below_top']}/{len(r['random'])}",
            f"{r['p_value']:.3f}",
        )
        for r in result["rows"]
    ]
    columns = (
        "heads masked",
        f"top k by {result['method']}",
        "random k mean ± sd",
        "random min - max",
        "random <= top",
        "p (permutation)",
    )
    titled_table(title, columns, rows, justify="right")
    half = result.get("split_half")
    if half:
        out.print(
            f"split-half agreement of {result['method']} ({half['splits']} splits): Spearman median "
            f"{half['spearman_median']:.3f}, 5th percentile {half['spearman_p5']:.3f}"
        )
    if compare:
        other = result["vs_compare"]
        out.print(f"vs {compare}: Spearman {other['spearman']:.3f}, top-10 overlap {other['top10_overlap']:.0%}")
    if result.get("png"):
        out.print(f"wrote {result['png']}")


def agreement_table(title: str, rows: Sequence[dict[str, Any]]) -> None:
    """`compare`: top-k overlap per k, Spearman over all heads."""
    cells = [(str(r["k"]), f"{r['overlap']:.0%}", f"{r['spearman']:.3f}") for r in rows]
    titled_table(title, ("top-k", "overlap", "Spearman (all heads)"), cells, justify="right")


def check_report(report: CheckReport, junit: Path | None) -> None:
    """`check`: one row per comparison, the heads that moved most when something failed, the verdict."""
    for text in report.notices:
        notice(text)
    rows = [
        (
            case.name,
            Text("pass", style="green") if case.passed else Text("DRIFT", style="red"),
            f"{case.value:.4g}",
            f"{case.limit:g}",
        )
        for case in report.cases
    ]
    title = f"{report.reference} vs {report.model}, {report.mode} mode, {len(report.probes)} probes re-scored"
    titled_table(title, ("check", "result", "value", "limit"), rows)
    if not report.passed:
        moved = [
            (
                m["score"],
                f"L{m['layer']}H{m['head']}",
                f"{m['reference']:.4f}",
                f"{m['fresh']:.4f}",
                f"{m['diff']:+.4f}",
                f"{m['rank_reference']} -> {m['rank_fresh']}",
            )
            for m in report.moved
        ]
        titled_table(
            "heads that moved most (sample means)", ("score", "head", "reference", "now", "change", "rank"), moved
        )
    if junit:
        out.print(f"wrote {junit}")
    verdict = Text("scores stable", style="green") if report.passed else Text("scores drifted", style="red")
    out.print(Text.assemble(verdict, f" ({report.seconds:.1f} s)"))


def tune_report(payload: dict[str, Any]) -> None:
    """`tune`: per budget, the pick on validation, then the test columns with needle-cluster intervals and the
    paired difference against HeadKV as published."""
    for budget, block in payload["budgets"].items():
        title = (
            f"B={budget}: test accuracy; pick on validation: {block['pick']} ({block['pick_validation_accuracy']:.3f})"
        )
        table = Table(title=title)
        for column in ("allocation", "accuracy [95% CI]", "vs HeadKV [95% CI]", "KV MiB"):
            table.add_column(column, justify="left" if column == "allocation" else "right")
        for row in block["test"]:
            low, high = row["interval"]
            diff = "-"
            if "vs_headkv" in row:
                d_low, d_high = row["vs_headkv_interval"]
                diff = f"{row['vs_headkv']:+.3f} [{d_low:+.3f}, {d_high:+.3f}]"
            name = (
                row["name"] + (" (pick)" if row["pick"] else "") + (" (published HeadKV)" if row["published"] else "")
            )
            table.add_row(printable(name), f"{row['accuracy']:.3f} [{low:.3f}, {high:.3f}]", diff, mib(row["kv_bytes"]))
        out.print(table)
    for budget, path in payload["artifacts"].items():
        line(f"wrote {path} (B={budget})")
