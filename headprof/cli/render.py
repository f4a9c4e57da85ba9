"""Everything the commands print, in one place and without logic: consoles, JSON, tables, progress.

Results go to stdout (one JSON object with `--json`); progress, notices and errors go to stderr. Both
consoles have rich markup off: paths, model names, needle ids and answers are user text and print as
they are (`[scores].safetensors` stays `[scores].safetensors`); styles are set with `Text`, never markup.
Long steps show a rich bar on a terminal and plain progress lines otherwise (`PlainProgress`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    import torch

    from headprof.allocation import BudgetSummary
    from headprof.check import CheckReport

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
    err.print(Text.assemble(("error:", "red"), " ", printable(message)), soft_wrap=True)


def notice(message: str) -> None:
    """A warning that does not stop the command."""
    err.print(Text.assemble(("notice:", "yellow"), " ", printable(message)), soft_wrap=True)


def interrupted(command: str | None) -> None:
    """Ctrl-C: what `command` kept and how to resume."""
    kept = INTERRUPTED.get(command or "", INTERRUPTED_DEFAULT)
    err.print(Text.assemble(("interrupted", "yellow"), ": ", kept), soft_wrap=True)


def help_text(text: str) -> None:
    """The command's help, as asked for by `headprof` with no command."""
    sys.stdout.write(text.rstrip("\n") + "\n")


# ---------------------------------------------------------------- progress


def _clock(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainProgress:
    """Progress as plain lines, for a stderr that is not a terminal (CI logs, `nohup`, a pipe).

    With a total: `<what>: <done>/<total> (<pct>%), <elapsed> elapsed, eta <left>` whenever another tenth
    is done and after `interval` seconds without a line. Without a total (loading a model): `<what>:
    <elapsed> elapsed` every `interval` seconds, then a closing `done in` line if any was printed and the
    step did not fail. Nothing is printed before the first tenth or the first interval, so a quick step
    (or one that fails at once, whose error line must stand alone) stays silent. A daemon thread calls
    `tick`, so a slow item still gets its line every `interval` seconds.
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        stream: TextIO,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = description
        self.total = total
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.started = self.last_line = clock()
        self.lines = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PlainProgress:
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.total is None and self.lines and exc_type is None:  # a failure ends with its error line instead
            self._write(f"{self.description}: done in {_clock(self.clock() - self.started)}")

    def advance(self, steps: int = 1) -> None:
        """`steps` more items done; a line when this crosses a tenth of the total (or finishes it)."""
        with self._lock:
            before, self.done = self.done, self.done + steps
            if self.total and (self.done * 10 // self.total > before * 10 // self.total):
                self._write()

    def tick(self) -> None:
        """A line if `interval` seconds went by without one."""
        with self._lock:
            if self.clock() - self.last_line >= self.interval:
                self._write()

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0)):
            self.tick()

    def _write(self, text: str | None = None) -> None:
        now = self.clock()
        elapsed = now - self.started
        if text is None and self.total is None:
            text = f"{self.description}: {_clock(elapsed)} elapsed"
        elif text is None:
            total = max(self.total or 0, 1)
            eta = _clock(elapsed / self.done * (total - self.done)) if self.done else "-"
            text = (
                f"{self.description}: {self.done}/{self.total} ({self.done * 100 // total}%), "
                f"{_clock(elapsed)} elapsed, eta {eta}"
            )
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last_line, self.lines = now, self.lines + 1


def _terminal(stream: TextIO | None) -> bool:
    """A rich bar or spinner only on the console's own terminal; any other stream gets plain lines."""
    return stream is None and err.is_terminal


@contextmanager
def progress(description: str, total: int, stream: TextIO | None = None) -> Iterator[Callable[[], None]]:
    """A long step of `total` items on stderr (or `stream`); yields the function to call once per item."""
    if _terminal(stream):
        columns = (
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda: bar.advance(task)
        return
    with PlainProgress(description, total, stream or sys.stderr) as plain:
        yield plain.advance


@contextmanager
def status(message: str, stream: TextIO | None = None) -> Iterator[None]:
    """A step without a count (loading a model): a spinner on a terminal, else a line every 30 s."""
    if _terminal(stream):
        with err.status(Text(f"{message} ...")):
            yield
        return
    with PlainProgress(message, None, stream or sys.stderr):
        yield


def line(text: str) -> None:
    """One line of plain output."""
    out.print(printable(text))


def mib(n: float) -> str:
    """Bytes as MiB with two decimals."""
    return f"{n / 2**20:.2f} MiB"


def _table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str | Text]], justify: str = "left", **kw: Any
) -> None:
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
        _table(f"probes ({mode} mode)", ("kind", "total", "right", "counted"), rows, justify="right")
    else:
        rows = [(kind, str(c["total"]), str(c["counted"])) for kind, c in counts.items()]
        _table(f"probes ({mode} mode)", ("kind", "total", "counted"), rows, justify="right")


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
        _table(title, ("rank", "layer", "head", "score", "interval", f"top-{boot['top_k']}"), rows, justify="right")
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


def scores_written(
    mode: str | None,
    counts: dict[str, dict[str, int]],
    method: str,
    reports: dict[str, dict[str, Any]],
    target: Path,
    seconds: float,
) -> None:
    """`score`: probes counted per kind, the top heads with their intervals, agreement, where the artifact went."""
    probe_counts(mode, counts)
    reliability(method, reports[method])
    for other, report in reports.items():
        if other != method:
            reliability(other, {**report, "top_heads": []})
    out.print(f"wrote {target} in {seconds:.1f} s")


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
    _table(title, ("layer", "min", "median", "max"), rows, justify="right")
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
    _table(f"top {k} heads", ("rank", "layer", "head", "budget" if budgets else "score"), rows, justify="right")
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


def accuracy_table(n_items: int, budgets: Sequence[int], rows: Sequence[Sequence[str]]) -> None:
    """`eval`: accuracy / KV MiB per method (rows) and budget (columns)."""
    title = f"accuracy (exact match) / KV MiB, {n_items} items"
    table = Table(title=title)
    table.add_column("method")
    for budget in budgets:
        table.add_column(f"B={budget}", justify="right")
    for row in rows:
        table.add_row(*row)
    out.print(table)


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


def task_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """`eval` on tasks: each task's own metric in percent (rows: task x length; columns: method budget)."""
    table = Table(title="task scores (%, each task's own metric)")
    table.add_column(header[0])
    for column in header[1:]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
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
    _table("tasks", ("suite", "task", "metric", "max new tokens", "what"), cells)


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
        )
        for r in result["rows"]
    ]
    columns = (
        "heads masked",
        f"top k by {result['method']}",
        "random k mean ± sd",
        "random min - max",
        "random <= top",
    )
    _table(title, columns, rows, justify="right")
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
    _table(title, ("top-k", "overlap", "Spearman (all heads)"), cells, justify="right")


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
    _table(title, ("check", "result", "value", "limit"), rows)
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
        _table("heads that moved most (sample means)", ("score", "head", "reference", "now", "change", "rank"), moved)
    if junit:
        out.print(f"wrote {junit}")
    verdict = Text("scores stable", style="green") if report.passed else Text("scores drifted", style="red")
    out.print(Text.assemble(verdict, f" ({report.seconds:.1f} s)"))
