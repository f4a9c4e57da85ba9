"""PNG figures: head-score heatmaps, accuracy against KV bytes, needle heatmaps.

Figures are `matplotlib.figure.Figure` objects saved with `savefig` (Agg picks itself for PNG):
no pyplot, no global backend switch, nothing left open in a notebook's figure manager.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
from matplotlib.transforms import offset_copy

from headprof.fileio import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _save(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")


def score_heatmap(scores: torch.Tensor, path: str | Path, title: str) -> None:
    """Layers (rows, bottom layer first) x heads (columns)."""
    n_layers, n_heads = scores.shape
    fig = Figure(figsize=(max(4, n_heads * 0.45 + 2), max(4, n_layers * 0.22 + 1)))
    ax = fig.subplots()
    image = ax.imshow(scores.numpy(), aspect="auto", origin="lower", cmap="viridis")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="score")
    _save(fig, path)


# Okabe & Ito's colour-blind-safe palette, one fixed colour and marker per method, so that a method
# looks the same in every figure whatever subset of methods a run has.
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "full": ("#000000", "*"),
    "streamingllm": ("#E69F00", "v"),
    "h2o": ("#56B4E9", "s"),
    "snapkv": ("#009E73", "o"),
    "pyramidkv": ("#F0E442", "^"),
    "adakv": ("#0072B2", "D"),
    "headkv": ("#D55E00", "P"),
    "kvzip": ("#CC79A7", "X"),
}
_OTHER_STYLE = ("#7F7F7F", "h")
DODGE_POINTS = 3.0


def method_style(method: str) -> tuple[str, str]:
    """(colour, marker) of a method; methods without a fixed style are grey hexagons."""
    return METHOD_STYLES.get(method, _OTHER_STYLE)


@dataclass(frozen=True)
class AccuracyPoint:
    """One method x budget on the accuracy figure: mean KV bytes, accuracy, the budget it was run at
    (None: the full cache) and, when the data carry per-item results, an interval (low, high)."""

    kv_bytes: float
    accuracy: float
    budget: int | None = None
    interval: tuple[float, float] | None = None


def format_bytes(value: float, _pos: object = None) -> str:
    """Tick label for a byte count: 512 KiB, 4 MiB, 1.5 GiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.3g} B"


def _near(a: tuple[int | None, float, float], b: tuple[int | None, float, float]) -> bool:
    return a[0] == b[0] and abs(a[1] - b[1]) < 0.2 and abs(a[2] - b[2]) < 0.04


def _error(point: AccuracyPoint) -> list[list[float]] | None:
    if point.interval is None:
        return None
    low, high = point.interval
    return [[max(0.0, point.accuracy - low)], [max(0.0, high - point.accuracy)]]


def accuracy_vs_bytes(
    curves: Mapping[str, Sequence[AccuracyPoint]],
    full: AccuracyPoint | None,
    path: str | Path,
    title: str,
    note: str | None = None,
) -> None:
    """One line per method (fixed colour and marker), each point labelled with its budget and drawn with its
    interval bar when it has one; the full cache as a point with a dashed reference line (and its interval as
    a band). Log-scale bytes with KiB/MiB ticks; the legend sits right of the axes; `note` (what the bars
    are) goes under them."""
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.subplots()
    labelled: list[tuple[int, float, float]] = []  # (budget, log2 bytes, accuracy) of the budget labels drawn
    for index, (method, points) in enumerate(sorted(curves.items())):
        colour, marker = method_style(method)
        # Methods at one budget hold about the same bytes: shift each method a few points sideways so that
        # their markers and bars do not hide each other (a display offset; the data stay where they are).
        dodge = DODGE_POINTS * (index - (len(curves) - 1) / 2)
        shifted = offset_copy(ax.transData, fig=fig, x=dodge, y=0, units="points")
        points = sorted(points, key=lambda p: p.kv_bytes)
        xs, ys = [p.kv_bytes for p in points], [p.accuracy for p in points]
        ax.plot(xs, ys, color=colour, marker=marker, mec="black", mew=0.4, label=method, transform=shifted)
        for point in points:
            if point.interval is not None:
                ax.errorbar(
                    point.kv_bytes,
                    point.accuracy,
                    yerr=_error(point),
                    color=colour,
                    capsize=2,
                    lw=0.8,
                    transform=shifted,
                )
            position = (point.budget, math.log2(point.kv_bytes), point.accuracy)
            if point.budget is None or any(_near(position, other) for other in labelled):
                continue  # one label for the methods that sit on the same spot at the same budget
            labelled.append(position)
            ax.annotate(
                str(point.budget),
                (point.kv_bytes, point.accuracy),
                xytext=(dodge + 4, 3),
                textcoords="offset points",
                fontsize=6,
                color="#333333",
            )
    if full is not None:
        colour, marker = method_style("full")
        label = f"full ({format_bytes(full.kv_bytes)})"
        ax.axhline(full.accuracy, color=colour, linestyle="--", linewidth=0.8)
        if full.interval is not None:
            ax.axhspan(*full.interval, color=colour, alpha=0.07, linewidth=0)
        ax.errorbar(
            full.kv_bytes, full.accuracy, yerr=_error(full), color=colour, marker=marker, capsize=2, lw=0.8, label=label
        )
    ax.set_xscale("log")
    every = [p.kv_bytes for points in curves.values() for p in points] + ([full.kv_bytes] if full else [])
    if every:  # set by hand: lines drawn with an offset transform do not update the data limits
        ax.set_xlim(min(every) / 1.2, max(every) * 1.2)
    ax.xaxis.set_major_locator(LogLocator(base=2))
    if every and 2 ** math.floor(math.log2(max(every) * 1.2)) < 2 * min(every) / 1.2:
        # fewer than two powers of two in view (points within one doubling): tick the points' own sizes
        sizes = sorted(set(every))
        ax.set_xticks(sizes[:: max(1, math.ceil(len(sizes) / 6))])
    ax.xaxis.set_major_formatter(FuncFormatter(format_bytes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("KV cache at the end of generation (log scale; point labels: budget per head)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    if note:
        fig.text(0.01, 0.0, note, fontsize=6.5, color="#333333", va="top")
    _save(fig, path)


def needle_grids(
    grids: Mapping[str, torch.Tensor], lengths: Sequence[int], depths: Sequence[float], path: str | Path, title: str
) -> None:
    """One panel per method: accuracy by context length (columns) x needle depth (rows), each cell printed;
    one colour bar (viridis, readable in grey and by colour-blind readers) for all panels; the full cache first."""
    names = sorted(grids, key=lambda name: (not name.startswith("full"), name))
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig = Figure(figsize=(2.6 * cols + 1.0, 2.3 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    image = None
    for index, (ax, name) in enumerate(zip(axes.flat, names)):
        values = grids[name]
        image = ax.imshow(values.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper")
        for (i, j), value in zip(itertools.product(range(len(depths)), range(len(lengths))), values.flatten()):
            ax.text(
                j,
                i,
                f"{float(value):.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="black" if value > 0.5 else "white",
            )
        ax.set_title(name, fontsize=8)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=6)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=6)
        if index // cols == rows - 1 or index + cols >= len(names):
            ax.set_xlabel("context length (tokens)", fontsize=7)
        if index % cols == 0:
            ax.set_ylabel("needle depth (%)", fontsize=7)
    if image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=0.85)
        bar.set_label("accuracy (exact match)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def _note(ax: Axes, text: str) -> None:
    """An axis with nothing to plot says why, in words, instead of staying empty."""
    ax.text(0.5, 0.5, textwrap.fill(text, 45), ha="center", va="center", fontsize=8, transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def reliability_figure(reports: Mapping[str, Mapping], path: str | Path, title: str) -> None:
    """Left: split-half Spearman over random needle splits per score (median and 5th percentile marked).
    Right: the first score's top heads with their bootstrap intervals."""
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    colours = {"r2": "tab:blue", "retrieval": "tab:orange"}
    for method, report in reports.items():
        values = report.get("split_half_values")
        if not values:
            continue
        half = report["split_half"]
        colour = colours.get(method, "tab:gray")
        left.hist(values, bins=30, alpha=0.55, color=colour, label=f"{method} (median {half['spearman_median']:.3f})")
        left.axvline(half["spearman_median"], color=colour, linewidth=1.5)
        left.axvline(half["spearman_p5"], color=colour, linewidth=1.5, linestyle="--")
    left.set_xlabel("Spearman between the two halves (all heads)")
    left.set_ylabel("splits")
    left.set_title("split-half agreement (solid: median, dashed: 5th pct)", fontsize=8)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=7, loc="upper left")
    else:  # no score could be split: say why instead of an empty axis
        reason = next((r.get("reason") for r in reports.values() if r.get("reason")), "too few needles")
        _note(left, f"split-half agreement not available:\n{reason}")
    method, report = next(iter(reports.items()))
    rows = report.get("top_heads") or []
    if rows:
        labels = [f"L{int(r[0])}H{int(r[1])}" for r in rows]
        scores = [r[2] for r in rows]
        errors = [[r[2] - r[3] for r in rows], [r[4] - r[2] for r in rows]]
        positions = list(range(len(rows)))[::-1]
        right.errorbar(scores, positions, xerr=errors, fmt="o", color=colours.get(method, "tab:gray"), capsize=3)
        right.set_yticks(positions, labels, fontsize=7)
        for y, r in zip(positions, rows):
            right.annotate(f"{r[5]:.0%}", (r[4], y), xytext=(4, -3), textcoords="offset points", fontsize=6)
        right.set_xlabel(f"{method} score (bootstrap interval; % of resamples in the top 10)")
        right.set_title(f"top {method} heads", fontsize=8)
        right.grid(alpha=0.3, axis="x")
    else:
        _note(right, f"bootstrap intervals not available:\n{report.get('bootstrap_reason', 'no counted probes')}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def dose_response(rows: Sequence[Mapping], path: str | Path, title: str) -> None:
    """Accuracy against heads masked: the top-k heads (line) and every random trial (dots, mean line)."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    ks = [r["k"] for r in rows]
    ax.plot(ks, [r["top"] for r in rows], marker="o", color="tab:red", label="top-k heads by score")
    for r in rows:
        ax.scatter([r["k"]] * len(r["random"]), r["random"], color="tab:blue", alpha=0.35, s=14)
    ax.plot(ks, [r["random_mean"] for r in rows], marker="s", color="tab:blue", label="random k (matched per layer)")
    if rows:
        ax.axhline(rows[0]["baseline"], color="black", linestyle="--", linewidth=1, label="nothing masked")
    ax.set_xticks(ks, [f"{r['k']}\n({r['share']:.0%})" for r in rows], fontsize=7)
    ax.set_xlabel("heads masked")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)
