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
        are), and added to the held scores in the `accumulate` dtype. No host sync: every shape comes from
        counts the host already knows (each head's held entries, the step's tokens, the budgets), so nothing
        is read back from the device, token after token."""
        batch, n_heads, q_len, dim = query.shape
        scaling = logit_scale(self.options.scale, scaling, dim)
        rows = len(layer.lengths)
        per = n_heads * batch // rows
        n_new = layer.n_recent
        device = query.device
        slot = torch.arange(max(layer.lengths, default=0), device=device)
        held_old = slot[None, :] < layer.offsets.diff()[:, None]
        flat_keys, flat_values = layer.flat_keys, layer.flat_values
        index = (layer.offsets[:-1, None] + slot[None, :]).clamp(max=max(flat_keys.shape[0] - 1, 0))
        new_pos = torch.arange(layer.seen - n_new, layer.seen, device=device).expand(rows, n_new)
        recent_keys, recent_values = layer.per_stored(layer.recent_keys), layer.per_stored(layer.recent_values)
        keys = torch.cat([flat_keys[index], recent_keys.reshape(rows, n_new, dim)], dim=1)
        values = torch.cat([flat_values[index], recent_values.reshape(rows, n_new, -1)], dim=1)
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
        scores = scores + probs.to(dtype).view(rows, per, q_len, -1).sum(dim=2).mean(dim=1)
        window, budgets = layer.plan.window, layer.row_budgets(batch)
        counts = [length + n_new for length in layer.lengths]
        keep = held & self._keep(held, scores, budgets, window, max(counts, default=0))
        # the counts kept, on the host (plans keep budgets on the CPU) and, the same, on the device
        lengths = [_kept_count(n, b, window) for n, b in zip(counts, layer.plan.budgets.repeat(batch).tolist())]
        kept = keep.sum(dim=1)
        offsets = torch.cat([kept.new_zeros(1), kept.cumsum(0)])
        # each row's kept slots first, in slot (= position) order, then gathered into flat storage
        order = (~keep).to(torch.uint8).argsort(dim=1, stable=True)
        total = sum(lengths)
        row = torch.repeat_interleave(torch.arange(rows, device=device), kept, output_size=total)
        chosen = order[row, torch.arange(total, device=device) - offsets[row]]
        layer.store(
            keys[row, chosen], values[row, chosen], positions[row, chosen], offsets, scores[row, chosen], lengths
        )

    @staticmethod
    def _keep(held: torch.Tensor, scores: torch.Tensor, budgets: torch.Tensor, window: int, most: int) -> torch.Tensor:
        """Keep-mask over each row's held slots (held in position order): everything while a row holds no
        more than its budget, else the last `window` and `topk(budget - window)` of the others. `most`: the
        largest count of held slots (known on the host)."""
        count = held.sum(dim=1)
        order = held.cumsum(dim=1) - 1  # rank of each held slot by position
        recent = held & (order >= (count - window)[:, None])
        candidates = held & ~recent
        wanted = (budgets - window).clamp(min=0)
        top = min(max(most - window, 0), held.shape[1])  # no row has more candidates
        ranked = scores.masked_fill(~candidates, float("-inf")).topk(top, dim=1).indices  # best candidates first
        chosen = torch.zeros_like(held).scatter_(
            1, ranked, torch.arange(top, device=held.device)[None, :] < wanted[:, None]
        )
        return torch.where((count > budgets)[:, None], recent | (chosen & candidates), held)


def _kept_count(count: int, budget: int, window: int) -> int:
    """How many entries `_keep` leaves a row that holds `count`: all up to the budget, else the last `window`
    and `budget - window` of the others."""
    if count <= budget:
        return count
    recent = min(window, count)
    return recent + min(max(budget - window, 0), count - recent)
