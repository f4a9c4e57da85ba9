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
