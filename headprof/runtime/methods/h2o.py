"""H2O (Zhang et al. 2023): heavy hitters by accumulated attention, compressed once or evicted while decoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from headprof.errors import HeadprofError
from headprof.runtime.methods.base import SCALES, Method, logit_scale
from headprof.runtime.selection import accumulated_scores, reduce_groups

if TYPE_CHECKING:
    from headprof.runtime.cache import CompressedLayer

DECODE_MODES = ("once", "evict")
ACCUMULATIONS = ("model", "float32")


@dataclass(frozen=True)
class H2OOptions:
    """`block`: prompt queries per step of the accumulation (memory `[B, H, block, T]`, never `T x T`);
    `decode`: `once` compresses after the prompt only (KVCache-Factory); `evict` keeps every head at its
    budget while decoding, as the original H2O does: each new token's attention is added to the kept
    entries' scores, and the lowest-scored entry outside the recent window leaves; `accumulate`: the dtype
    `evict` keeps those running scores in: `model` (the original's `hh_score`, a half-precision tensor to
    which every step's rows, cast to the model dtype, are added) or `float32` (no rounding per step); `scale`:
    the logits' factor, the model's `scaling` or `head-dim` (see `logit_scale`)."""

    block: int = 256
    decode: str = "once"
    accumulate: str = "model"
    scale: str = "model"

    def __post_init__(self) -> None:
        if self.block < 1:
            raise HeadprofError(f"h2o block must be >= 1, got {self.block}")
        if self.decode not in DECODE_MODES:
            raise HeadprofError(f"unknown h2o decode mode '{self.decode}' ({', '.join(DECODE_MODES)})")
        if self.accumulate not in ACCUMULATIONS:
            raise HeadprofError(f"unknown h2o accumulate '{self.accumulate}' ({', '.join(ACCUMULATIONS)})")
        if self.scale not in SCALES:
            raise HeadprofError(f"unknown scale '{self.scale}' ({', '.join(SCALES)})")


class H2O(Method):
    """Zhang et al. 2023: heavy hitters (attention summed over all prompt queries) plus the recent window."""

    name = "h2o"
    Options = H2OOptions
    options: H2OOptions

    @property
    def evicts(self) -> bool:
        """Decode-time eviction (the original H2O) when `decode="evict"`."""
        return self.options.decode == "evict"

    def score(
        self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int, n_stored: int
    ) -> torch.Tensor:
        """Attention each position receives, summed over every prompt query, averaged over a KV group."""
        scaling = logit_scale(self.options.scale, scaling, query.shape[-1])
        return reduce_groups(accumulated_scores(query, keys, scaling, self.options.block), n_stored)

    def evict(self, layer: CompressedLayer, query: torch.Tensor, scaling: float) -> None:
        """Add this step's attention to every held entry's score, then bring each head back to its budget:
        `topk(b - w)` of the entries outside the last w positions (in position order, as the original
        `H2OKVCache_LayerWise` calls it) plus those w. The step's tokens join the flat per-head storage.

        The step's attention is the original's: `q k^T / sqrt(d)` in the model dtype, softmax in float32 cast
        back to it, summed over the step's queries (then averaged over a KV group, as the prompt's scores
        are), and added to the held scores in the `accumulate` dtype."""
        batch, n_heads, q_len, dim = query.shape
        scaling = logit_scale(self.options.scale, scaling, dim)
        rows = layer.offsets.numel() - 1
        per = n_heads * batch // rows
        lengths = layer.offsets.diff()
        n_new = layer.recent_keys.shape[2]
        device = query.device
        slot = torch.arange(int(lengths.max()) if rows else 0, device=device)
        held_old = slot[None, :] < lengths[:, None]
        index = (layer.offsets[:-1, None] + slot[None, :]).clamp(max=max(layer.flat_keys.shape[0] - 1, 0))
        new_pos = torch.arange(layer.seen - n_new, layer.seen, device=device).expand(rows, n_new)
        recent_keys, recent_values = layer.per_stored(layer.recent_keys), layer.per_stored(layer.recent_values)
        keys = torch.cat([layer.flat_keys[index], recent_keys.reshape(rows, n_new, dim)], dim=1)
        values = torch.cat([layer.flat_values[index], recent_values.reshape(rows, n_new, -1)], dim=1)
        positions = torch.cat([layer.positions[index].long(), new_pos], dim=1)
        held = torch.cat([held_old, torch.ones(rows, n_new, dtype=torch.bool, device=device)], dim=1)
        dtype = keys.dtype if self.options.accumulate == "model" else torch.float32
        old = layer.entry_scores[index].to(dtype) * held_old
        scores = torch.cat([old, torch.zeros(rows, n_new, dtype=dtype, device=device)], dim=1)
        # this step's attention over what each head holds (the queries of a group share their stored head)
        logits = (query.reshape(rows, per * q_len, dim) @ keys.transpose(1, 2)) / (1.0 / scaling)
        query_pos = (layer.seen - q_len + torch.arange(q_len, device=device)).repeat(per)
        visible = held[:, None, :] & (positions[:, None, :] <= query_pos[None, :, None])
        probs = logits.float().masked_fill(~visible, float("-inf")).softmax(dim=-1).nan_to_num(0.0)
        received = probs.to(dtype).view(rows, per, q_len, -1).sum(dim=2).mean(dim=1)
        scores = scores + received
        budgets = layer.plan.budgets.to(device).repeat(batch)  # plans keep budgets on the CPU
        keep = held & self._keep(held, scores, budgets, layer.plan.window)
        counts = keep.sum(dim=1)
        offsets = torch.zeros(rows + 1, dtype=torch.long, device=device)
        offsets[1:] = counts.cumsum(0)
        layer.store(keys[keep], values[keep], positions[keep], offsets, scores[keep])

    @staticmethod
    def _keep(held: torch.Tensor, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> torch.Tensor:
        """Keep-mask over each row's held slots (held in position order): everything while a row holds no
        more than its budget, else the last `window` and `topk(budget - window)` of the others."""
        count = held.sum(dim=1)
        order = held.cumsum(dim=1) - 1  # rank of each held slot by position
        recent = held & (order >= (count - window)[:, None])
        candidates = held & ~recent
        keep = held.clone()
        over = count > budgets
        for n_cand, k in {(int(c), int(b) - window) for c, b in zip((count - window)[over], budgets[over])}:
            rows = (over & (count - window == n_cand) & (budgets - window == k)).nonzero().squeeze(1)
            slots = candidates[rows].nonzero()[:, 1].view(len(rows), n_cand)
            ranked = scores[rows].gather(1, slots)
            chosen = slots.gather(1, ranked.topk(max(k, 0), dim=-1).indices)
            keep[rows] = recent[rows]
            keep[rows[:, None], chosen] = True
        return keep
