"""Attention probabilities recomputed for a few queries, in plain PyTorch: shared by scoring (answer-step
rows) and the runtime's methods (SnapKV votes, H2O sums, KVzip reconstruction), never the full T x T matrix.
"""

from __future__ import annotations

import torch


def attention_rows(query: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """Softmax rows of the last queries over all keys, causal, in float32.

    query `[B, Hq, n, d]` (the last n query positions), key `[B, Hkv, T, d]`; returns `[B, Hq, n, T]`.
    Query head h reads KV head h // g (the grouping of transformers' repeat_kv).
    """
    batch, n_heads, n_rows, dim = query.shape
    n_kv, total = key.shape[1], key.shape[2]
    grouped = query.reshape(batch, n_kv, (n_heads // n_kv) * n_rows, dim)
    logits = torch.matmul(grouped, key.transpose(-1, -2)).float() * scaling
    logits = logits.view(batch, n_heads, n_rows, total)
    query_pos = torch.arange(total - n_rows, total, device=key.device)
    future = torch.arange(total, device=key.device)[None, :] > query_pos[:, None]
    return logits.masked_fill(future, float("-inf")).softmax(dim=-1)
