"""Which KV entries a head keeps (METHOD.md §4): the scoring primitives and the one selection core.

Every method produces an importance score per prompt position and head; the core keeps the last
`w` positions (the observation window) plus the top `b_i - w` others of head i. Methods differ in
the score (SnapKV window attention, H2O accumulated attention, KVzip reconstruction attention,
StreamingLLM position) and in `b_i` (uniform, PyramidKV, HeadKV); AdaKV replaces the per-head
top-k by a per-layer pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from headprof.attention import attention_rows


@dataclass(frozen=True)
class Selection:
    """Kept positions of every stored head `r` (r = batch * S + head), concatenated: head r owns
    `positions[offsets[r]:offsets[r + 1]]`, in increasing position order."""

    positions: torch.Tensor
    offsets: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets.diff()


def window_scores(
    query: torch.Tensor, key: torch.Tensor, scaling: float, window: int, kernel: int, pooling: str = "max"
) -> torch.Tensor:
    """SnapKV: mean attention of the last `window` queries over each position, smoothed by a 1-D pool.

    query `[B, Hq, T, d]`, key `[B, Hkv, T, d]` -> `[B, Hq, T]`.
    """
    total = query.shape[2]
    window = min(window, total)
    votes = attention_rows(query[:, :, -window:], key, scaling).mean(dim=2)
    if total == window:  # a prompt no longer than the window: everything is kept anyway
        return votes
    # Pool the candidates only (as SnapKV does), so the window's own heavy columns don't bleed into its neighbours;
    # the window itself is always kept by the selection core.
    candidates = pool(votes[..., : total - window], kernel, pooling)
    return torch.cat([candidates, votes[..., total - window :]], dim=-1)


def pool(scores: torch.Tensor, kernel: int, pooling: str = "max") -> torch.Tensor:
    """Smooth along positions so that a kept token keeps its neighbours (SnapKV's clustering)."""
    if kernel <= 1 or scores.shape[-1] == 0:
        return scores
    flat = scores.reshape(-1, 1, scores.shape[-1])
    if pooling == "max":
        flat = F.max_pool1d(flat, kernel, stride=1, padding=kernel // 2)
    else:
        flat = F.avg_pool1d(flat, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    return flat.view_as(scores)


def accumulated_scores(query: torch.Tensor, key: torch.Tensor, scaling: float, block: int = 256) -> torch.Tensor:
    """H2O: attention each position receives, summed over all prompt queries, `block` queries at a time.

    Peak extra memory is `[B, Hq, block, T]`, never the full `T x T` matrix.
    """
    batch, n_heads, total, _ = query.shape
    acc = torch.zeros(batch, n_heads, total, device=query.device, dtype=torch.float32)
    for start in range(0, total, block):
        stop = min(start + block, total)
        rows = attention_rows(query[:, :, start:stop], key[:, :, :stop], scaling)
        acc[:, :, :stop] += rows.sum(dim=2)
    return acc


def reduce_groups(scores: torch.Tensor, n_stored: int, how: str = "mean") -> torch.Tensor:
    """`[B, Hq, T]` query-head scores -> `[B, S, T]` for S stored heads (S = Hkv shares a selection per group)."""
    batch, n_heads, total = scores.shape
    if n_stored == n_heads:
        return scores
    grouped = scores.view(batch, n_stored, n_heads // n_stored, total)
    return grouped.amax(dim=2) if how == "max" else grouped.mean(dim=2)


def _gather_ranked(order: torch.Tensor, counts: torch.Tensor) -> Selection:
    """Keep the first `counts[r]` entries of row r of `order` (positions ranked by preference), sorted."""
    rows, width = order.shape
    rank = torch.arange(width, device=order.device).expand(rows, width)
    keep = rank < counts[:, None]
    sentinel = torch.iinfo(torch.long).max
    positions = torch.where(keep, order, torch.full_like(order, sentinel)).sort(dim=1).values
    flat = positions[keep]  # `keep` is a prefix of every row, and so are the sorted kept positions
    offsets = torch.zeros(rows + 1, dtype=torch.long, device=order.device)
    offsets[1:] = counts.cumsum(0)
    return Selection(flat, offsets)


def top_k_with_window(scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
    """Per stored head: the last `window` positions plus the `budget - window` best-scored others.

    scores `[B, S, T]`; budgets `[S]` (window included; anything >= T keeps the whole head).
    """
    batch, n_stored, total = scores.shape
    flat = scores.reshape(batch * n_stored, total).float()
    counts = budgets.to(flat.device).repeat(batch).clamp(max=total)
    window = min(window, total)
    # Rank: +inf scores (StreamingLLM's sinks) first, then the window newest first, then the other scores.
    finite_top = flat.masked_fill(torch.isinf(flat), float("-inf")).amax(dim=1, keepdim=True).clamp(min=0)
    boosted = flat.clone()
    boosted[:, total - window :] = finite_top + 1 + torch.arange(window, device=flat.device, dtype=flat.dtype)
    order = boosted.argsort(dim=1, descending=True, stable=True)
    return _gather_ranked(order, counts)


def pooled_top_k(scores: torch.Tensor, budgets: torch.Tensor, window: int, floor: float) -> Selection:
    """AdaKV: per layer and batch element, keep the top `sum(b_i - w)` scores across all heads jointly,
    after each head has taken its best `floor * (b_i - w)` (then the window on top)."""
    batch, n_stored, total = scores.shape
    window = min(window, total)
    free = (budgets.to(scores.device) - window).clamp(min=0, max=total - window)
    base = scores[:, :, : total - window].float()
    order = base.argsort(dim=2, descending=True, stable=True)
    guaranteed = (free.float() * floor).floor().long()
    ranks = torch.empty_like(order)
    ranks.scatter_(2, order, torch.arange(total - window, device=scores.device).expand_as(order))
    protected = ranks < guaranteed[None, :, None]
    pool_size = int(free.sum() - guaranteed.sum())
    keep = protected.clone()
    rest = base.masked_fill(protected, float("-inf")).reshape(batch, -1)
    if pool_size > 0:
        chosen = rest.topk(min(pool_size, rest.shape[1]), dim=1).indices
        keep.view(batch, -1).scatter_(1, chosen, True)
    full = torch.ones(batch, n_stored, total, dtype=torch.bool, device=scores.device)
    full[:, :, : total - window] = keep
    counts = full.sum(dim=2).reshape(-1)
    positions = torch.arange(total, device=scores.device).expand(batch * n_stored, total)
    order = torch.where(full.reshape(batch * n_stored, total), positions, positions + total).sort(dim=1).values
    return _gather_ranked(order, counts)
