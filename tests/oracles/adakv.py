"""AdaKV (FFY0/AdaKV @ efe4e2eea0099bf497f0c175ac5440a915d89f83), adaptive_snapkv/monkeypatch/snapkv_utils.py.

`AdaptiveSnapKVCluster.calcul_attn_sore` (mean of the window rows; with gqa_support the group mean comes
before pooling) and `update_kv_gqa` / `update_kv_wo_gqa`: each head's candidates sorted (torch.sort,
descending), a layer-wide topk of H*(B-w) over the sorted scores counts how many each head wins, then
`round(count * (1 - alpha) + int((B - w) * alpha))` entries per head, plus the window. Defaults
(monkeypatch.config_compress, pred.py): w=32, kernel 7, max pooling, alpha 0.2, normalize off.
"""

from __future__ import annotations

import torch

from oracles import kvcache_factory as kvcf


def adakv(q, k, budget, window, kernel=7, pooling="max", per_kv_head=True, alpha=0.2, normalize=False):
    """Keep-mask `[B, S, T]` of one layer."""
    total, base = k.shape[2], budget - window
    scores = kvcf.window_scores(q, k, window, kernel, pooling, per_kv_head, reduce="mean")
    batch, heads, length = scores.shape
    if base > length:
        return torch.ones(batch, heads, total, dtype=torch.bool)
    ranked, order = scores.sort(dim=-1, descending=True)
    weighted = ranked
    if normalize:
        weighted = ranked * (ranked[..., :base].sum(-1, keepdim=True) / ranked.sum(-1, keepdim=True))
    won = torch.topk(weighted.reshape(batch, length * heads), k=heads * base, dim=-1).indices // length
    counts = torch.zeros(batch, heads, dtype=won.dtype).scatter_add_(-1, won, torch.ones_like(won))
    caps = torch.round(counts * (1 - alpha) + int(base * alpha)).int()
    keep = torch.zeros(batch, heads, total, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            keep[b, h, order[b, h, : caps[b, h]]] = True
    keep[..., total - window :] = True
    return keep
