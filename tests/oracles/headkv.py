"""HeadKV (FYYFU/HeadKV @ 0862a0955fe82e9ff611d59541918e02c5def625), headkv/snapkv_utils.py.

`ReasonSnapKVCluster.update_kv` (l.418-490): pooled mean window votes per head, no compression when the base
budget B - w exceeds the T - w candidates (that is B > T), otherwise each head keeps the first `cap_h` of its
candidates sorted by torch.sort (descending), plus the window. Budgets: `ReasonSnapKVCluster.__init__`
(l.342-388): each head's score over their sum, to the power `temp`, renormalised; a pool of `(B' // beta) * L * H`
entries (B' = B - w) shared by those shares on top of `B' - B' // beta` each, `torch.round` (half to even) per head.
KVCache-Factory's `HeadKVCluster` (l.1094) is the same code with a kv_head granularity (group mean before pooling),
its budgets computed the same way (`run_longbench.py` l.278-280).
"""

from __future__ import annotations

import torch

from oracles import kvcache_factory as kvcf


def capacities(scores: torch.Tensor, budget: int, window: int, beta: float, temp: float = 1.0) -> torch.Tensor:
    """Candidates per head `[L, H]` (window excluded) from head scores `[L, H]`, as the reference computes them
    (in float64: it builds the shares with numpy)."""
    base = budget - window
    share = scores.double() / scores.double().sum()
    share = share**temp
    share = share / share.sum()
    pool = (base // beta) * scores.shape[0] * scores.shape[1]
    return torch.round(share * pool + (base - base // beta)).int()


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
