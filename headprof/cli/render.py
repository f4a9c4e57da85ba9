"""What the commands print, without logic: consoles, JSON, one-line messages, tables.

Results go to stdout (one JSON object with `--json`); progress, notices and errors go to stderr. Both
consoles have rich markup off: paths, model names, needle ids and answers are user text and print as
they are (`[scores].safetensors` stays `[scores].safetensors`); styles are set with `Text`, never markup.
Long steps show progress through `progress.py`; what `eval`, `ablate`, `check` and `compare` print is in
`render_eval.py`. Library messages name parameters (`max_new_tokens`): `with_flags` names their flags.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    import torch

    from headprof.allocation import BudgetSummary

out = Console(highlight=False, markup=False)
err = Console(stderr=True, highlight=False, markup=False)
# Off a terminal (a pipe, a file, CI) rich would cut tables at 80 columns: names the user must type (task names,
# paths) would end in an ellipsis or split mid-word. There, lines are as wide as their content.
PIPE_WIDTH = 1000
if not out.is_terminal and not os.environ.get("COLUMNS"):
    out.width = PIPE_WIDTH

# What Ctrl-C leaves behind, per command: only `score` checkpoints and `eval` caches results.
INTERRUPTED = {
    "score": "finished probes are checkpointed; rerun the same command to resume",
    "eval": "finished results are in the results cache; rerun the same command to resume",
}
INTERRUPTED_DEFAULT = "nothing was written"
# Library messages name a parameter in backticks (`max_new_tokens`): on the command line it is a flag.
FLAGS = {
    "bootstrap": "--bootstrap",
    "budgets": "--budgets",
    "count": "--count",
    "gqa": "--gqa",
    "k": "--k",
    "lengths": "--lengths",
    "max_new_tokens": "--max-new-tokens",
    "max_row_diff": "--max-row-diff",
    "min_spearman": "--min-spearman",
    "min_topk": "--min-topk",
    "probes": "--probes",
    "random_trials": "--random-trials",
    "sample": "--sample",
    "samples": "--samples",
    "shard": "--shard",
    "splits": "--splits",
    "task": "--task",
    "top": "--top",
    "workdir": "--workdir",
}


def with_flags(message: str) -> str:
    """A library message as the CLI user reads it: each `parameter` in `FLAGS` named by its flag."""
    return re.sub(r"`([^`\s]+)`", lambda m: FLAGS.get(m[1], m[0]), message)


def printable(text: str) -> str:
    """User text as it can be printed: lone surrogates (argv or JSON bytes that are not UTF-8) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def strict_json(payload: Any) -> tuple[Any, list[str]]:
    """`payload` with NaN and infinities replaced by null, and the paths of the replaced values."""
    replaced: list[str] = []

    def walk(value: Any, where: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(where or "value")
            return None
        if isinstance(value, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return value

    return walk(payload, ""), replaced


def finite(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` ready for strict JSON (a file or `--json`): NaN/inf become null, with a notice naming them."""
    clean, replaced = strict_json(payload)
    if replaced:
        notice(f"not a finite number, written as null: {', '.join(replaced[:5])}{' ...' if len(replaced) > 5 else ''}")
    return clean


def emit(payload: dict[str, Any]) -> None:
    """The `--json` output: exactly one strict JSON object on one stdout line (`finite`)."""
    sys.stdout.write(json.dumps(finite(payload), allow_nan=False) + "\n")


def error(message: str) -> None:
    """The one-line error every failure ends with."""
    err.print(Text.assemble(("error:", "red"), " ", printable(with_flags(message))), soft_wrap=True)


def notice(message: str) -> None:
    """A warning that does not stop the command."""
    err.print(Text.assemble(("notice:", "yellow"), " ", printable(with_flags(message))), soft_wrap=True)


def interrupted(command: str | None) -> None:
    """Ctrl-C: what `command` kept and how to resume."""
    kept = INTERRUPTED.get(command or "", INTERRUPTED_DEFAULT)
    err.print(Text.assemble(("interrupted", "yellow"), ": ", kept), soft_wrap=True)


def help_text(text: str) -> None:
    """The command's help, as asked for by `headprof` with no command."""
    sys.stdout.write(text.rstrip("\n") + "\n")


def line(text: str) -> None:
    """One line of plain output."""
    out.print(printable(text))


def mib(n: float) -> str:
    """Bytes as MiB with two decimals."""
    return f"{n / 2**20:.2f} MiB"


def titled_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str | Text]], justify: str = "left", **kw: Any
) -> None:
    """A table of `rows` under `title`, every column justified alike, on stdout."""
    table = Table(title=title, **kw)
    for column in columns:
        table.add_column(column, justify=justify)
    for row in rows:
        table.add_row(*row)
    out.print(table)


# ---------------------------------------------------------------- per command


def probes_built(target: Path, count: int, counts: dict[str, int], sizes: list[int]) -> None:
    """`probes build`: what was written."""
    per_kind = ", ".join(f"{v} {k}" for k, v in counts.items())
    out.print(f"wrote {count} probes ({per_kind}) to {target}; prompt lengths {sizes[0]}-{sizes[-1]} tokens")


def probe_counts(mode: str | None, counts: dict[str, dict[str, int]]) -> None:
    """Probes per kind: total, answered right and counted (generate mode: a reasoning probe counts only when
    its needle is answered right both ways round)."""
    if mode == "generate":
        rows = [
            (kind, str(c["total"]), str(c.get("right", c["counted"])), str(c["counted"])) for kind, c in counts.items()
        ]
        titled_table(f"probes ({mode} mode)", ("kind", "total", "right", "counted"), rows, justify="right")
    else:
        rows = [(kind, str(c["total"]), str(c["counted"])) for kind, c in counts.items()]
        titled_table(f"probes ({mode} mode)", ("kind", "total", "counted"), rows, justify="right")


def reliability(method: str, report: dict[str, Any]) -> None:
    """The top heads with bootstrap intervals, and the split-half agreement distribution of one score."""
    boot = report.get("bootstrap")
    if report["top_heads"] and boot:
        rows = [
            (str(rank), str(layer), str(head), f"{score:.4f}", f"{low:.4f} - {high:.4f}", f"{share:.0%}")
            for rank, (layer, head, score, low, high, share) in enumerate(report["top_heads"], 1)
        ]
        title = (
            f"top {method} heads: bootstrap {boot['level']:.0%} interval over {boot['samples']} needle resamples, "
            f"share of resamples in the top {boot['top_k']}"
        )
        titled_table(
            title, ("rank", "layer", "head", "score", "interval", f"top-{boot['top_k']}"), rows, justify="right"
        )
    elif report.get("bootstrap_reason"):
        out.print(f"bootstrap intervals of {method}: not available ({report['bootstrap_reason']})")
    half = report.get("split_half")
    if half is None:
        out.print(f"split-half agreement of {method}: not available ({report.get('reason', 'too few needles')})")
        return
    needles = " + ".join(f"{n} {kind}" for kind, n in half["needles"].items())
    overlap = next(v for k, v in half.items() if k.startswith("top") and k.endswith("_median"))
    out.print(
        f"split-half agreement of {method} ({half['splits']} random splits of {needles} needles): Spearman "
        f"median {half['spearman_median']:.3f}, 5th percentile {half['spearman_p5']:.3f} "
        f"(min {half['spearman_min']:.3f}); top-10 overlap median {overlap:.0%}"
    )


def scores_written(report: dict[str, Any]) -> None:
    """`score` (`score_job.score_report`): probes counted per kind, the top heads with their intervals,
    agreement, where the artifact went."""
    probe_counts(report["mode"], report["per_kind"])
    method, reports = report["method"], report["reliability"]
    reliability(method, reports[method])
    for other, other_report in reports.items():
        if other != method:
            reliability(other, {**other_report, "top_heads": []})
    out.print(f"wrote {report['artifact']} in {report['seconds']:.1f} s")


def budgets_written(target: Path, summary: BudgetSummary) -> None:
    """`allocate`: per-layer budgets, how many heads sit at the floor, KV bytes against the alternatives."""
    s = summary
    rows = [
        (str(layer), "sliding window, not budgeted", "", "")
        if layer in s.sliding_layers
        else (str(layer), str(low), str(mid), str(high))
        for layer, (low, mid, high) in enumerate(s.layers)
    ]
    title = f"{s.policy} budgets (B={s.budget}, w={s.window}, gqa={s.gqa})"
    titled_table(title, ("layer", "min", "median", "max"), rows, justify="right")
    layout_other = "query-head" if s.gqa == "kv" else "KV-head"
    out.print(
        f"total {s.total} entries ({s.heads} heads x {s.budget}); {s.at_floor:.0%} of heads at the floor ({s.floor})"
    )
    out.print(
        f"KV bytes at {s.context} tokens ({s.bytes_per_value} B/value): {mib(s.kv_bytes)} this layout, "
        f"{mib(s.kv_bytes_other_layout)} with {layout_other} budgets of {s.budget}, {mib(s.kv_bytes_full)} full cache "
        f"({s.kv_bytes / s.kv_bytes_full:.1%} of full; stored entries {s.stored})"
    )
    out.print(f"wrote {target}")


def head_table(
    artifact: Path,
    label: str,
    model_id: str,
    values: torch.Tensor,
    counts: dict[str, dict[str, int]] | None,
    mode: str | None,
    k: int,
    top: list[list[float]],
    layers: list[dict[str, Any]],
    reports: dict[str, dict[str, Any]] | None,
    pngs: Sequence[Path],
) -> None:
    """`show`: the top heads, a heatmap of all heads with each layer's mean and max, and (score artifacts)
    each score's bootstrap intervals and split-half agreement."""
    shape = f"{values.shape[0]} layers x {values.shape[1]} heads"
    out.print(Text.assemble((str(artifact), "bold"), f": {label} of {model_id} ({shape})"))
    if counts is not None:
        probe_counts(mode, counts)
    budgets = label.startswith("budgets")  # an allocation: whole numbers of KV entries
    rows = [
        (str(rank), str(layer), str(head), f"{value:.0f}" if budgets else f"{value:.4f}")
        for rank, (layer, head, value) in enumerate(top, 1)
    ]
    titled_table(f"top {k} heads", ("rank", "layer", "head", "budget" if budgets else "score"), rows, justify="right")
    out.print(_heatmap(values, layers))
    low, high = float(values.min()), float(values.max())
    number = "{:.0f}" if budgets else "{:.4f}"
    out.print(
        f"cells: '{SHADES[0]}' = {number.format(low)} (lowest) ... '{SHADES[-1]}' = {number.format(high)} (highest)"
    )
    for method, report in (reports or {}).items():
        reliability(method, report)
    for path in pngs:
        out.print(f"wrote {path}")


SHADES = " .:-=+*#%@"  # lowest to highest: the heatmap reads in a pipe, where colours are dropped


def _heatmap(values: torch.Tensor, layers: list[dict[str, Any]]) -> Table:
    """One cell per head, a shade character (and on a terminal a colour), denser = higher; the last columns
    summarise the layer."""
    low, high = float(values.min()), float(values.max())
    span = (high - low) or 1.0
    table = Table(title="heatmap (rows: layers, columns: heads)", box=None, pad_edge=False, padding=(0, 1))
    table.add_column("layer", justify="right")
    for head in range(values.shape[1]):
        table.add_column(f"{head:>2}", justify="center")
    table.add_column("mean / max", justify="left")
    for layer, row in enumerate(values):
        cells = []
        for value in row.tolist():
            share = (value - low) / span
            level = int(round(share * 255))
            shade = SHADES[min(int(share * len(SHADES)), len(SHADES) - 1)] * 2
            cells.append(Text(shade, style=f"on rgb({level},{int(level * 0.6)},{255 - level})"))
        mark = "  (sliding window)" if layers[layer]["sliding"] else ""
        table.add_row(str(layer), *cells, f"{layers[layer]['mean']:.3f} / {layers[layer]['max']:.3f}{mark}")
    return table


def answer(title: str, payload: dict[str, Any]) -> None:
    """`run`: the answer and what it cost, one row per field."""
    table = Table(title=title, show_header=False)
    for key, value in payload.items():
        table.add_row(key, f"{mib(value)} ({value} B)" if key.startswith("kv_bytes") else str(value))
    out.print(table)


def task_rows_written(target: Path, count: int, per_task: dict[str, int], skipped: Sequence[str]) -> None:
    """`tasks build`: what was written, and what did not fit."""
    for message in skipped:
        notice(message)
    summary = ", ".join(f"{task} {n}" for task, n in per_task.items())
    out.print(f"wrote {count} rows ({summary}) to {target}")


def task_registry(rows: Sequence[dict[str, Any]]) -> None:
    """`tasks list`: every task, its metric and answer length."""
    cells = [(r["suite"], r["task"], r["metric"], str(r["max_new_tokens"]), r["description"]) for r in rows]
    titled_table("tasks", ("suite", "task", "metric", "max new tokens", "what"), cells)
