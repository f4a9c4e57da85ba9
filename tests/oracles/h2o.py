"""The original H2O (FMInference/H2O @ ac75c2a8a9e76832b2a4139b9363373b56336bfb), decode-time eviction.

`h2o_hf/utils_real_drop/modify_llama.py` `H2OKVCache_LayerWise` (l.242-327): `hh_score` accumulates, per head,
the attention every kept entry received, summed over all queries so far (the prompt's, then one row per decoded
token, new columns appended); after every forward, when the cache holds more than hh_size + recent_size entries,
it keeps `topk(hh_score[:, :len - recent], hh_size)` (re-sorted by position) plus the last `recent_size`.
Numerics (`H2OLlamaAttention.forward` l.484-505): logits `matmul(q, k^T) / math.sqrt(head_dim)` in the model
dtype, softmax in float32 cast back to it, and `hh_score` a tensor of that dtype: each step's rows are summed
(`sum(0).sum(1)`, a half-precision result) and added to it in half precision.
"""

from __future__ import annotations

import math

import torch


class H2OLayer:
    """One head group's dense reference: keys/values of every position, a kept mask, accumulated scores.

    Works per stored head on `[S, T, d]` keys with the queries of that head (`[S, g, n, d]`: the g query heads
    that share the stored head; their attention is averaged, as headprof's KV-head layout does).
    """

    def __init__(self, heavy: int, recent: int):
        self.heavy, self.recent = heavy, recent
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.kept: torch.Tensor | None = None  # [S, T] bool over every position seen
        self.score: torch.Tensor | None = None  # [S, T] accumulated attention (0 where evicted)

    def step(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Append k/v `[S, n, d]`, attend with q `[S, g, n, d]` over the kept entries, accumulate, evict."""
        first = self.keys is None
        self.keys = k if first else torch.cat([self.keys, k], dim=1)
        self.values = v if first else torch.cat([self.values, v], dim=1)
        new = torch.ones(k.shape[0], k.shape[1], dtype=torch.bool)
        self.kept = new if first else torch.cat([self.kept, new], dim=1)
        total, n = self.keys.shape[1], q.shape[2]
        logits = torch.matmul(q, self.keys[:, None].transpose(-1, -2)) / math.sqrt(q.shape[-1])
        query_pos = torch.arange(total - n, total)
        visible = self.kept[:, None, None, :] & (torch.arange(total)[None, :] <= query_pos[:, None])[None, None]
        probs = torch.softmax(logits.float().masked_fill(~visible, float("-inf")), dim=-1).to(q.dtype)
        out = torch.matmul(probs.float(), self.values[:, None].float())
        received = probs.sum(dim=2).mean(dim=1)  # [S, T]: summed over the queries, averaged over the group
        if first:
            self.score = received
        else:
            self.score = torch.cat([self.score, torch.zeros(k.shape[0], n, dtype=q.dtype)], dim=1) + received
        self._evict()
        return out

    def _evict(self) -> None:
        for s in range(self.kept.shape[0]):
            held = self.kept[s].nonzero().squeeze(1)
            if len(held) <= self.heavy + self.recent:
                continue
            candidates = held[: len(held) - self.recent]
            top = torch.topk(self.score[s, candidates], self.heavy).indices
            keep = torch.zeros_like(self.kept[s])
            keep[candidates[top]] = True
            keep[held[len(held) - self.recent :]] = True
            self.kept[s] = keep
            self.score[s] = self.score[s] * keep
