"""KVCache-Factory (Zefan-Cai/KVCache-Factory @ c97f9d706d63d1b56e980f8b81b2a924c21162b3), pyramidkv/pyramidkv_utils.py.

SnapKV (`SnapKVCluster.update_kv` l.494 and its kv_head path l.541), PyramidKV (`PyramidKVCluster.update_kv` l.348,
l.440), H2O (`H2OKVCluster.update_kv` l.815, l.863), StreamingLLM (`StreamingLLMKVCluster.update_kv` l.911).
The kv_head granularity (`_grouped_window_attn_cache` l.273) group-reduces the window votes (mean) before
pooling; the query_head granularity repeats K/V first and selects per query head. `run_longbench.py` l.266-281
sets w=8 (StreamingLLM: w=B-4), kernel 7, max pooling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from oracles import mask_from_indices


def repeat_heads(k: torch.Tensor, groups: int) -> torch.Tensor:
    """transformers' repeat_kv: KV head j serves query heads j*g .. j*g+g-1."""
    return k.repeat_interleave(groups, dim=1)


def _causal_block(size: int, dtype: torch.dtype) -> torch.Tensor:
    # 0 on and below the diagonal, the dtype's most negative number above it (l.284-286)
    block = torch.full((size, size), torch.finfo(dtype).min)
    cols = torch.arange(size)
    return block.masked_fill(cols[None, :] <= cols[:, None], 0)


def window_probs(q: torch.Tensor, k: torch.Tensor, window: int) -> torch.Tensor:
    """Attention of the last `window` queries over all T keys: logits in the model dtype divided by sqrt(d),
    causal only inside the window block, softmax in float32 cast back to the model dtype. `[B, Hq, w, T]`."""
    k = repeat_heads(k, q.shape[1] // k.shape[1])
    logits = torch.matmul(q[..., -window:, :], k.transpose(2, 3)) / math.sqrt(q.shape[-1])
    logits[:, :, -window:, -window:] += _causal_block(window, logits.dtype)
    return torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)


def pool(scores: torch.Tensor, kernel: int, pooling: str) -> torch.Tensor:
    """`F.avg_pool1d` (count_include_pad left at its default, True) or `F.max_pool1d`, stride 1, padding k//2."""
    if pooling == "avg":
        return F.avg_pool1d(scores, kernel_size=kernel, padding=kernel // 2, stride=1)
    return F.max_pool1d(scores, kernel_size=kernel, padding=kernel // 2, stride=1)


def group_mean(scores: torch.Tensor, groups: int) -> torch.Tensor:
    """`_reduce_group_scores(..., 'mean')` (l.252): query head h belongs to KV head h // groups."""
    if groups == 1:
        return scores
    return scores.reshape(scores.shape[0], scores.shape[1] // groups, groups, *scores.shape[2:]).mean(dim=2)


def window_scores(q, k, window, kernel, pooling, per_kv_head, reduce="sum"):
    """Pooled window votes over the T-w candidates: `[B, S, T-w]` (S = KV heads when per_kv_head)."""
    probs = window_probs(q, k, window)[..., :, : k.shape[2] - window]
    votes = probs.sum(dim=-2) if reduce == "sum" else probs.mean(dim=-2)
    if per_kv_head:
        votes = group_mean(votes, q.shape[1] // k.shape[1])
    return pool(votes, kernel, pooling)


def _keep_topk_and_window(scores: torch.Tensor, capacity: int, window: int, total: int) -> torch.Tensor:
    # `_select_topk_kv` (l.301): topk over the candidates, then the window appended
    batch, heads = scores.shape[:2]
    keep = mask_from_indices(scores.topk(capacity, dim=-1).indices, (batch, heads, total - window))
    return torch.cat([keep, torch.ones(batch, heads, window, dtype=torch.bool)], dim=-1)


def _everything(q, k, per_kv_head):
    heads = k.shape[1] if per_kv_head else q.shape[1]
    return torch.ones(q.shape[0], heads, k.shape[2], dtype=torch.bool)


def snapkv(q, k, budget, window, kernel=7, pooling="max", per_kv_head=True):
    """SnapKV: no compression when T < B; otherwise the top B-w pooled window votes (summed rows) + the window."""
    total = k.shape[2]
    if total < budget:
        return _everything(q, k, per_kv_head)
    scores = window_scores(q, k, window, kernel, pooling, per_kv_head, "sum")
    return _keep_topk_and_window(scores, budget - window, window, total)


def pyramid_capacity(total: int, budget: int, window: int, n_layers: int, layer: int, beta: int = 20) -> int | None:
    """Candidates layer `layer` keeps besides the window (l.356-372, integer arithmetic); None = no compression."""
    min_num = (budget - window) // beta
    max_num = (budget - window) * 2 - min_num
    if max_num >= total - window:
        max_num = total - window
        min_num = (budget - window) * 2 - max_num
    steps = (max_num - min_num) // (n_layers - 1)
    if total < budget:
        return None
    if total < (budget - window) * 2:  # short prompt: plain SnapKV
        return budget - window
    return max_num - layer * steps


def pyramidkv(q, k, budget, window, n_layers, layer, kernel=7, pooling="max", per_kv_head=True, beta=20):
    """PyramidKV: SnapKV selection with the layer's capacity from `pyramid_capacity`."""
    total = k.shape[2]
    capacity = pyramid_capacity(total, budget, window, n_layers, layer, beta)
    if capacity is None:
        return _everything(q, k, per_kv_head)
    scores = window_scores(q, k, window, kernel, pooling, per_kv_head, "sum")
    return _keep_topk_and_window(scores, capacity, window, total)


def h2o(q, k, budget, window, per_kv_head=True):
    """H2O as compressed once after the prompt: attention of every prompt query (full causal mask), summed
    over the rows, candidates only, group mean, top B-w + the window (l.815-861)."""
    total = k.shape[2]
    if total < budget:
        return _everything(q, k, per_kv_head)
    groups = q.shape[1] // k.shape[1]
    logits = torch.matmul(q, repeat_heads(k, groups).transpose(2, 3)) / math.sqrt(q.shape[-1])
    logits += _causal_block(total, logits.dtype)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)
    scores = probs[:, :, :, : total - window].sum(dim=-2)
    if per_kv_head:
        scores = group_mean(scores, groups)
    return _keep_topk_and_window(scores, budget - window, window, total)


def streamingllm(batch, heads, total, budget, sinks=4):
    """StreamingLLM with window_size = B - sinks: no compression when T < B, else the first `sinks` + last B - sinks."""
    keep = torch.zeros(batch, heads, total, dtype=torch.bool)
    if total < budget:
        return ~keep
    keep[..., :sinks] = True
    keep[..., total - (budget - sinks) :] = True
    return keep
