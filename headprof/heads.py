"""Pure arithmetic on head-score tables `[L, H]` (no model, no transformers): GQA grouping, rankings and
rank agreement, the summaries `show`, `score` and `import` print. Kept apart from scoring so that
allocating and showing artifacts stays a light import.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from headprof.errors import HeadprofError


def kv_view(scores: torch.Tensor, n_kv_heads: int, reduce: str = "sum") -> torch.Tensor:
    """`[..., L, Hq]` -> `[..., L, Hkv]`: aggregate the g query heads that share a KV head (sum by default)."""
    n_heads = scores.shape[-1]
    grouped = scores.reshape(*scores.shape[:-1], n_kv_heads, n_heads // n_kv_heads)
    return grouped.sum(-1) if reduce == "sum" else grouped.mean(-1)


def ranked_heads(scores: torch.Tensor) -> list[int]:
    """Flat head indices (layer * Hq + head), best first; ties keep the lower index (deterministic)."""
    return torch.argsort(scores.flatten(), descending=True, stable=True).tolist()


def top_heads(scores: torch.Tensor, k: int) -> list[list[float]]:
    """The `k` best heads as `[layer, head, score]` rows (score rounded to 6 digits, as reports print it)."""
    flat, order = scores.flatten(), ranked_heads(scores)[:k]
    n_heads = scores.shape[1]
    return [[i // n_heads, i % n_heads, round(float(flat[i]), 6)] for i in order]


def layer_summary(values: torch.Tensor, sliding_layers: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Per layer: mean and max value, the head holding the max, and whether it is a sliding-window layer
    (its cache is a rolling window: allocations leave it unbudgeted)."""
    return [
        {
            "layer": i,
            "mean": round(float(r.mean()), 6),
            "max": round(float(r.max()), 6),
            "argmax_head": int(r.argmax()),
            "sliding": i in sliding_layers,
        }
        for i, r in enumerate(values)
    ]


def rank_agreement(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Spearman rank correlation over all heads and the overlap of the two top-k head sets."""
    from scipy.stats import spearmanr

    if not 1 <= k <= a.numel():
        raise HeadprofError(f"top-k must be between 1 and the number of heads ({a.numel()}), got {k}")
    flat_a, flat_b = a.flatten().double().numpy(), b.flatten().double().numpy()
    with warnings.catch_warnings():  # a constant table has no rank correlation: NaN, shown as null in --json
        warnings.simplefilter("ignore")
        rho = float(spearmanr(flat_a, flat_b).statistic)
    top_a, top_b = set(ranked_heads(a)[:k]), set(ranked_heads(b)[:k])
    return {"spearman": rho, f"top{k}_overlap": len(top_a & top_b) / k}


def top_k_agreement(a: torch.Tensor, b: torch.Tensor, sizes: list[int]) -> list[dict[str, float]]:
    """Rank agreement at several top-k sizes: rows of k, top-k overlap and Spearman (the same for every k)."""
    if not sizes:
        raise HeadprofError("`k` needs at least one top-k size")
    rows = []
    for size in sizes:
        agreement = rank_agreement(a, b, size)
        rows.append({"k": size, "spearman": agreement["spearman"], "overlap": agreement[f"top{size}_overlap"]})
    return rows
