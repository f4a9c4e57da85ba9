"""kvpress (NVIDIA/kvpress @ 8bb29b9c3078452a86d692f29123fa6c793e2b05), for the options that follow it.

- `kvpress/presses/snapkv_press.py` `SnapKVPress.score` (l.42-105): window rows averaged, pooled per query
  head, then averaged over the GQA group (pool first, then mean: FasterDecoding/SnapKV#22).
- `kvpress/presses/adakv_press.py` `AdaKVPress.compress` (l.53-78): each head's top `int(n_kept * alpha)`
  are raised to the dtype's max, then the layer-wide bottom `H * (T - n_kept)` are pruned (topk of the
  negated scores). kvpress counts the window inside n_kept; here, as in headprof's option, the window is
  kept apart and n_kept = B - w candidates per head.
"""

from __future__ import annotations

import torch

from oracles import kvcache_factory as kvcf


def pooled_then_mean(q, k, window, kernel, pooling, reduce="mean"):
    """Window votes pooled per query head, then the group mean: `[B, Hkv, T-w]`."""
    probs = kvcf.window_probs(q, k, window)[..., : k.shape[2] - window]
    votes = probs.sum(dim=-2) if reduce == "sum" else probs.mean(dim=-2)
    return kvcf.group_mean(kvcf.pool(votes, kernel, pooling), q.shape[1] // k.shape[1])


def snapkv(q, k, budget, window, kernel=7, pooling="max"):
    """SnapKV in the KV-head layout with kvpress's order; top B-w per KV head + the window."""
    total = k.shape[2]
    if total < budget:
        return torch.ones(q.shape[0], k.shape[1], total, dtype=torch.bool)
    scores = pooled_then_mean(q, k, window, kernel, pooling)
    keep = torch.zeros(scores.shape[0], scores.shape[1], total, dtype=torch.bool)
    keep[..., : total - window].scatter_(-1, scores.topk(budget - window, dim=-1).indices, True)
    keep[..., total - window :] = True
    return keep


def adakv_safeguard(scores: torch.Tensor, budget: int, window: int, alpha: float = 0.2) -> torch.Tensor:
    """AdaKVPress's selection on candidate scores `[B, H, T-w]` (window kept apart): keep-mask `[B, H, T]`."""
    batch, heads, length = scores.shape
    n_kept = min(budget - window, length)
    n_safe = int(n_kept * alpha)
    scores = scores.clone()
    scores.scatter_(-1, torch.topk(scores, n_safe, dim=-1).indices, torch.finfo(scores.dtype).max)
    n_pruned = heads * (length - n_kept)
    pruned = torch.topk(-scores.reshape(batch, -1), n_pruned, dim=1).indices
    keep = torch.ones(batch, heads * length, dtype=torch.bool).scatter(1, pruned, False).view(batch, heads, length)
    return torch.cat([keep, torch.ones(batch, heads, window, dtype=torch.bool)], dim=-1)
