"""SnapKV (Li et al. 2024) and its options, shared by the methods that only change its budgets or selection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from headprof.errors import HeadprofError
from headprof.runtime.methods.base import SCALES, Method, logit_scale
from headprof.runtime.selection import GQA_ORDERS, snapkv_scores

POOLINGS = ("max", "avg")


@dataclass(frozen=True)
class SnapKVOptions:
    """`kernel`: 1-D pooling width over positions (odd); `pooling`: max | avg; `gqa_order`: in the KV-head
    layout, average the group's window votes then pool (`mean-pool`, KVCache-Factory and AdaKV) or pool
    each query head then average (`pool-mean`, kvpress); `scale`: the logits' factor, the model's own
    `scaling` (`model`) or the references' literal `1 / sqrt(head_dim)` (`head-dim`; see `logit_scale`);
    `votes`: how many of the last prompt queries vote, when more than the kept window `w` (0, every
    reference: the window's own queries). At small budgets the kept window is short (8 at B=32) and its
    queries are the chat template's closing tokens, not the question: `votes=32` lets the question vote while
    only `w` recent entries are kept (`selection.window_votes`)."""

    kernel: int = 7
    pooling: str = "max"
    gqa_order: str = "mean-pool"
    scale: str = "model"
    votes: int = 0

    def __post_init__(self) -> None:
        # an even kernel would shift the pooled scores by half a position
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise HeadprofError(f"pooling kernel must be an odd number >= 1, got {self.kernel}")
        if self.pooling not in POOLINGS:
            raise HeadprofError(f"unknown pooling '{self.pooling}' ({', '.join(POOLINGS)})")
        if self.gqa_order not in GQA_ORDERS:
            raise HeadprofError(f"unknown gqa_order '{self.gqa_order}' ({', '.join(GQA_ORDERS)})")
        if self.votes < 0:
            raise HeadprofError(f"votes must be >= 0 (0: the window votes), got {self.votes}")
        if self.scale not in SCALES:
            raise HeadprofError(f"unknown scale '{self.scale}' ({', '.join(SCALES)})")


class SnapKV(Method):
    """Li et al. 2024, as KVCache-Factory runs it: the last `w` prompt queries vote (attention summed over
    the window's rows, pooled); every head keeps the window and `topk(B - w)` of the other positions."""

    name = "snapkv"
    Options = SnapKVOptions
    options: SnapKVOptions
    window_reduce: ClassVar[str] = "sum"  # KVCache-Factory sums the window's rows; AdaKV and HeadKV average them

    @property
    def score_key(self) -> object:
        """Window votes depend on the reduction and the scoring options only: SnapKV and PyramidKV (sum), AdaKV
        and HeadKV (mean) share theirs whatever their budgets, floors or spill."""
        o = self.options
        return "window-votes", self.window_reduce, o.kernel, o.pooling, o.gqa_order, o.scale, o.votes

    def score(
        self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int, n_stored: int
    ) -> torch.Tensor:
        """Window votes, pooled over candidate positions, per stored head."""
        o = self.options
        scaling = logit_scale(o.scale, scaling, query.shape[-1])
        return snapkv_scores(
            query, keys, scaling, window, n_stored, o.kernel, o.pooling, self.window_reduce, o.gqa_order, o.votes
        )
