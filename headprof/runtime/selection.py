"""Which KV entries a head keeps (METHOD.md §4): the scoring primitives and the selection rules.

Every method produces an importance score per prompt position and stored head; a selection rule keeps
the observation window (the last `w` positions) plus the best candidates. Methods differ in the score
(SnapKV window votes, H2O accumulated attention, KVzip reconstruction attention) and in the rule:
top-k per head (SnapKV, PyramidKV, H2O), a sorted prefix of per-head length (HeadKV, AdaKV's
layer-wide counts), one budget across all layers and heads (KVzip).

Each rule calls the torch op its reference calls (`torch.topk` in KVCache-Factory's SnapKV, PyramidKV and
H2O and in KVzip's uniform variant, `torch.sort` in AdaKV and HeadKV) on the same candidates in the same
order, so ties (max pooling makes plateaus of equal scores; half-precision scores make many more) are
broken as the reference breaks them on the same device: by that op, not by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from headprof.attention import attention_rows

GQA_ORDERS = ("mean-pool", "pool-mean")


@dataclass(frozen=True)
class Selection:
    """Kept positions of every stored head `r` (r = batch * S + head), concatenated: head r owns
    `positions[offsets[r]:offsets[r + 1]]`, in increasing position order."""

    positions: torch.Tensor
    offsets: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets.diff()

    @classmethod
    def from_mask(cls, keep: torch.Tensor) -> Selection:
        """From a keep-mask `[R, T]` (or `[B, S, T]`): positions in row-major order, so sorted within each row."""
        keep = keep.reshape(-1, keep.shape[-1])
        positions = keep.nonzero()[:, 1]
        offsets = torch.zeros(keep.shape[0] + 1, dtype=torch.long, device=keep.device)
        offsets[1:] = keep.sum(dim=1).cumsum(0)
        return cls(positions, offsets)


# ---------------------------------------------------------------- scores


def window_votes(
    query: torch.Tensor, key: torch.Tensor, scaling: float, window: int, reduce: str, voters: int = 0
) -> torch.Tensor:
    """SnapKV's votes: attention of the last `window` queries over the `T - window` candidates, summed
    (KVCache-Factory's SnapKV/PyramidKV) or averaged (AdaKV, HeadKV) over the window's rows.

    `voters` > `window`: the last `voters` queries vote instead (each over the candidates it sees, causally),
    so that a small kept window still votes from the whole question; 0 (every reference): the window votes.
    Softmax in float32, then cast to the model dtype before the reduction, as the references do (in bf16
    this rounds the votes and makes ties). query `[B, Hq, T, d]`, key `[B, Hkv, T, d]` -> `[B, Hq, T - w]`.
    """
    total = key.shape[2]
    voters = min(max(voters, window), total)
    rows = attention_rows(query[:, :, -voters:], key, scaling, model_dtype_logits=True)
    rows = rows[..., : total - window].to(key.dtype)
    return rows.sum(dim=2) if reduce == "sum" else rows.mean(dim=2)


def pool(scores: torch.Tensor, kernel: int, pooling: str = "max") -> torch.Tensor:
    """Smooth along positions so that a kept token keeps its neighbours (SnapKV's clustering).

    Stride 1, padding `kernel // 2`; average pooling counts the padding (`count_include_pad=True`, PyTorch's
    default, which every reference uses), so the first and last positions are divided by the full kernel.
    """
    if kernel <= 1 or scores.shape[-1] == 0:
        return scores
    flat = scores.reshape(-1, 1, scores.shape[-1])
    if pooling == "max":
        flat = F.max_pool1d(flat, kernel, stride=1, padding=kernel // 2)
    else:
        flat = F.avg_pool1d(flat, kernel, stride=1, padding=kernel // 2)
    return flat.view_as(scores)


def reduce_groups(scores: torch.Tensor, n_stored: int, how: str = "mean") -> torch.Tensor:
    """`[B, Hq, ...]` query-head scores -> `[B, S, ...]` for S stored heads (S = Hkv: one selection per group)."""
    batch, n_heads = scores.shape[:2]
    if n_stored == n_heads:
        return scores
    grouped = scores.reshape(batch, n_stored, n_heads // n_stored, *scores.shape[2:])
    return grouped.amax(dim=2) if how == "max" else grouped.mean(dim=2)


def snapkv_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    window: int,
    n_stored: int,
    kernel: int = 7,
    pooling: str = "max",
    reduce: str = "sum",
    order: str = "mean-pool",
    voters: int = 0,
) -> torch.Tensor:
    """Pooled window votes per stored head `[B, S, T]`; the window's own columns are +inf (always kept).

    Only the candidates are pooled (the window's heavy columns don't bleed into their neighbours). In the
    KV-head layout the group's votes are averaged before pooling (`order="mean-pool"`: KVCache-Factory's
    kv_head granularity and AdaKV's GQA support) or each query head is pooled first (`"pool-mean"`: kvpress).
    """
    total = key.shape[2]
    window = min(window, total)
    kept = torch.full((*query.shape[:1], n_stored, window), float("inf"), dtype=key.dtype, device=key.device)
    if total == window:
        return kept
    votes = window_votes(query, key, scaling, window, reduce, voters)
    if order == "mean-pool":
        candidates = pool(reduce_groups(votes, n_stored), kernel, pooling)
    else:
        candidates = reduce_groups(pool(votes, kernel, pooling), n_stored)
    return torch.cat([candidates, kept], dim=-1)


def accumulated_scores(query: torch.Tensor, key: torch.Tensor, scaling: float, block: int = 256) -> torch.Tensor:
    """H2O: attention each position receives, summed over all prompt queries, `block` queries at a time.

    Each softmax row is cast to the model dtype before it is added (as KVCache-Factory does); the sum is
    kept in float32 and cast back at the end. Peak extra memory is `[B, Hq, block, T]`, never `T x T`.
    """
    batch, n_heads, total, _ = query.shape
    acc = torch.zeros(batch, n_heads, total, device=query.device, dtype=torch.float32)
    for start in range(0, total, block):
        stop = min(start + block, total)
        rows = attention_rows(query[:, :, start:stop], key[:, :, :stop], scaling, model_dtype_logits=True)
        rows = rows.to(key.dtype)
        acc[:, :, :stop] += rows.sum(dim=2, dtype=torch.float32)
    return acc.to(key.dtype)


# ---------------------------------------------------------------- selection rules


def _rows(scores: torch.Tensor, budgets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, S, T]` scores and `[S]` budgets -> `[B * S, T]` rows and per-row budgets capped at T."""
    total = scores.shape[-1]
    counts = budgets.to(scores.device).long().repeat(scores.shape[0]).clamp(max=total)
    return scores.reshape(-1, total), counts


def _keep_top(keep: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> None:
    """Mark the `counts[r]` best of each row's candidates (`torch.topk`, one call per distinct count)."""
    for count in counts.unique().tolist():
        if count <= 0:
            continue
        rows = (counts == count).nonzero().squeeze(1)
        chosen = candidates[rows].topk(count, dim=-1).indices
        keep[rows[:, None], chosen] = True


def top_k_with_window(scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
    """KVCache-Factory's rule: the last `window` positions plus `topk(budget - window)` of the candidates.

    scores `[B, S, T]`; budgets `[S]` (window included; a budget >= T keeps the whole head).
    """
    flat, counts = _rows(scores, budgets)
    total = flat.shape[1]
    window = min(window, total)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[:, total - window :] = True
    keep[counts >= total] = True
    partial = counts < total
    _keep_top(keep[:, : total - window], flat[:, : total - window], torch.where(partial, counts - window, 0))
    return Selection.from_mask(keep)


def _keep_sorted_prefix(order: torch.Tensor, counts: torch.Tensor, total: int) -> torch.Tensor:
    """Keep-mask `[R, total]` of the first `counts[r]` entries of each row of `order` (ranked positions)."""
    rank = torch.arange(order.shape[1], device=order.device)
    keep = torch.zeros(order.shape[0], total, dtype=torch.bool, device=order.device)
    return keep.scatter(1, order, rank[None, :] < counts[:, None])


def sorted_prefix_with_window(scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
    """HeadKV's rule: each head's candidates sorted (`torch.sort`, descending), the first `budget - window`
    kept, plus the window."""
    flat, counts = _rows(scores, budgets)
    total = flat.shape[1]
    window = min(window, total)
    order = flat[:, : total - window].sort(dim=-1, descending=True).indices
    keep = _keep_sorted_prefix(order, counts - window, total)
    keep[:, total - window :] = True
    return Selection.from_mask(keep)


def adakv_top_k(
    scores: torch.Tensor, budgets: torch.Tensor, window: int, floor: float, normalize: bool = False
) -> Selection:
    """AdaKV (the paper's and AdaKV repository's rule): per layer and batch element, each head's candidates
    sorted (`torch.sort`); a layer-wide `topk` of `sum(b_i - w)` over the sorted scores counts how many each
    head wins; head i keeps `round(count_i * (1 - floor) + int((b_i - w) * floor))` (round half to even), plus
    the window. The total is close to, not exactly, the budget. `normalize` weights each head's sorted scores
    by the share its top `b_i - w` hold (KVCache-Factory's AdaKVCluster default; off in the AdaKV repo).
    """
    batch, n_stored, total = scores.shape
    window = min(window, total)
    length = total - window
    base = (budgets.to(scores.device).long() - window).clamp(min=0)
    if length == 0 or bool((base > length).any()):
        return Selection.from_mask(torch.ones(batch * n_stored, total, dtype=torch.bool, device=scores.device))
    ranked, order = scores[..., :length].sort(dim=-1, descending=True)
    weighted = ranked
    if normalize:
        top = torch.arange(length, device=scores.device) < base[:, None]
        weighted = ranked * ((ranked * top).sum(-1, keepdim=True) / ranked.sum(-1, keepdim=True))
    won = torch.topk(weighted.reshape(batch, n_stored * length), k=int(base.sum()), dim=-1).indices // length
    counts = torch.zeros(batch, n_stored, dtype=won.dtype, device=scores.device)
    counts.scatter_add_(-1, won, torch.ones_like(won))
    floors = (base.double() * floor).floor().long()
    caps = torch.round(counts * (1 - floor) + floors).long().reshape(-1)
    keep = _keep_sorted_prefix(order.reshape(batch * n_stored, length), caps, total)
    keep[:, length:] = True
    return Selection.from_mask(keep)


def safeguard_top_k(scores: torch.Tensor, budgets: torch.Tensor, window: int, floor: float) -> Selection:
    """kvpress's AdaKVPress rule, with the window kept apart: each head's top `int((b_i - w) * floor)` are
    raised to the dtype's max, then the layer-wide bottom `sum(T - w - (b_i - w))` candidates are dropped
    (`topk` of the negated scores). The total is exact."""
    batch, n_stored, total = scores.shape
    window = min(window, total)
    length = total - window
    kept = (budgets.to(scores.device).long() - window).clamp(min=0, max=length)
    candidates = scores[..., :length].clone()
    safe = (kept.double() * floor).floor().long()
    for count in safe.unique().tolist():
        heads = (safe == count).nonzero().squeeze(1)
        if count > 0:
            top = candidates[:, heads].topk(count, dim=-1).indices
            candidates[:, heads] = candidates[:, heads].scatter(-1, top, torch.finfo(scores.dtype).max)
    pruned = int((length - kept).sum())
    keep = torch.ones(batch, n_stored * length, dtype=torch.bool, device=scores.device)
    if pruned > 0:
        keep.scatter_(1, torch.topk(-candidates.reshape(batch, -1), pruned, dim=1).indices, False)
    window_keep = torch.ones(batch, n_stored, window, dtype=torch.bool, device=scores.device)
    return Selection.from_mask(torch.cat([keep.view(batch, n_stored, length), window_keep], dim=-1))


def global_top_k(candidates: torch.Tensor, count: int) -> torch.Tensor:
    """One budget over everything: keep-mask of the `count` best of `candidates` `[B, ...]` per batch element
    (`torch.topk` over the flattened rest, in layer, head, position order)."""
    batch = candidates.shape[0]
    flat = candidates.reshape(batch, -1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if count > 0:
        keep.scatter_(1, flat.topk(min(count, flat.shape[1]), dim=1).indices, True)
    return keep.view_as(candidates)


def above_threshold(candidates: torch.Tensor, count: int) -> torch.Tensor:
    """KVzip's rule for `count` entries: keep-mask of the candidates `[B, ...]` scoring strictly above the
    `(count + 1)`-th best of their batch element (all of them when `count` covers them all).

    The authors (`KVScore._threshold`) keep `score > sorted[int(n * ratio) - 1]`: with `int(n * ratio) - 1 =
    count` that is `count` entries when the scores are distinct, fewer when some tie with the threshold
    (in half precision, often): those are all dropped, none picked.
    """
    batch = candidates.shape[0]
    flat = candidates.reshape(batch, -1)
    if count >= flat.shape[1]:
        return torch.ones_like(candidates, dtype=torch.bool)
    threshold = flat.topk(max(count, 0) + 1, dim=1).values[:, -1:]
    return (flat > threshold).view_as(candidates)
