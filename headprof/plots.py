"""PNG figures: head-score heatmaps, accuracy against KV bytes, needle heatmaps.

Figures are `matplotlib.figure.Figure` objects saved with `savefig` (Agg picks itself for PNG):
no pyplot, no global backend switch, nothing left open in a notebook's figure manager.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from headprof.fileio import atomic_path


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


def accuracy_vs_bytes(
    curves: Mapping[str, Sequence[tuple[float, float]]], full: tuple[float, float] | None, path: str | Path, title: str
) -> None:
    """One line per method: (KV bytes, accuracy) points; the full cache as a horizontal reference line."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for method, points in sorted(curves.items()):
        points = sorted(points)
        ax.plot([p[0] / 2**20 for p in points], [p[1] for p in points], marker="o", label=method)
    if full is not None:
        ax.axhline(full[1], color="black", linestyle="--", linewidth=1, label=f"full ({full[0] / 2**20:.1f} MiB)")
    ax.set_xscale("log")
    ax.set_xlabel("KV cache (MiB, log scale)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    _save(fig, path)


def needle_grids(
    grids: Mapping[str, torch.Tensor], lengths: Sequence[int], depths: Sequence[float], path: str | Path, title: str
) -> None:
    """One panel per method: accuracy by context length (columns) x needle depth (rows)."""
    names = sorted(grids)
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig = Figure(figsize=(2.6 * cols, 2.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        ax.imshow(grids[name].numpy(), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_title(name, fontsize=8)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=6)
        ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths], fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


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
