"""HeadKV (FYYFU/HeadKV @ 0862a0955fe82e9ff611d59541918e02c5def625), headkv/snapkv_utils.py.

`ReasonSnapKVCluster.update_kv` (l.418-490): pooled mean window votes per head, no compression when the base
budget B - w exceeds the T - w candidates (that is B > T), otherwise each head keeps the first `cap_h` of its
candidates sorted by torch.sort (descending), plus the window. Budgets come from the allocation (l.342-388).
KVCache-Factory's `HeadKVCluster` (l.1094) is the same code with a kv_head granularity (group mean before pooling).
"""

from __future__ import annotations

import torch

from oracles import kvcache_factory as kvcf


def headkv(q, k, budget, capacities, window, kernel=7, pooling="max", per_kv_head=True):
    """Keep-mask `[B, S, T]` of one layer; `capacities[s]` = candidates head s keeps (its budget minus w)."""
    total = k.shape[2]
    scores = kvcf.window_scores(q, k, window, kernel, pooling, per_kv_head, reduce="mean")
    batch, heads, length = scores.shape
    if budget - window > length:
        return torch.ones(batch, heads, total, dtype=torch.bool)
    order = scores.sort(dim=-1, descending=True).indices
    keep = torch.zeros(batch, heads, total, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            keep[b, h, order[b, h, : int(capacities[h])]] = True
    keep[..., total - window :] = True
    return keep
