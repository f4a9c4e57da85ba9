"""AdaKV (Feng et al. 2024): SnapKV scores, budgets pooled across a layer's heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headprof.errors import HeadprofError
from headprof.runtime.methods.snapkv import SnapKV, SnapKVOptions
from headprof.runtime.selection import Selection, adakv_top_k, safeguard_top_k

FLOOR_RULES = ("adakv", "kvpress")


@dataclass(frozen=True)
class AdaKVOptions(SnapKVOptions):
    """SnapKV's options plus `floor`: the share of its own budget each head is guaranteed; `floor_rule`:
    `adakv` (the paper's and AdaKV repository's `round((1 - floor) * count + int(floor * (B - w)))` after
    the layer-wide top-k) or `kvpress` (AdaKVPress: the floor reserved first, then an exact layer-wide
    pool); `normalize`: weight each head's scores by the share its top B - w hold (AdaKV's optional flag,
    KVCache-Factory's default)."""

    floor: float = 0.2
    floor_rule: str = "adakv"
    normalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.floor <= 1.0:
            raise HeadprofError(f"adakv floor must lie in [0, 1], got {self.floor}")
        if self.floor_rule not in FLOOR_RULES:
            raise HeadprofError(f"unknown floor_rule '{self.floor_rule}' ({', '.join(FLOOR_RULES)})")


class AdaKV(SnapKV):
    """Feng et al. 2024: a layer's heads pool their budgets and keep the layer-wide top SnapKV scores (mean
    window votes), each head guaranteed a floor share (default 0.2) of its own budget."""

    name = "adakv"
    Options = AdaKVOptions
    options: AdaKVOptions
    window_reduce = "mean"

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        """Layer-wide top-k with per-head floors, by the chosen rule."""
        if self.options.floor_rule == "kvpress":
            return safeguard_top_k(scores, budgets, window, self.options.floor)
        return adakv_top_k(scores, budgets, window, self.options.floor, self.options.normalize)
