"""AdaKV (Feng et al. 2024): SnapKV scores, budgets pooled across a layer's heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headprof.errors import HeadprofError
from headprof.runtime.methods.snapkv import SnapKV, SnapKVOptions
from headprof.runtime.selection import Selection, pooled_top_k


@dataclass(frozen=True)
class AdaKVOptions(SnapKVOptions):
    """SnapKV's options plus `floor`: the share of its own budget each head is guaranteed."""

    floor: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.floor <= 1.0:
            raise HeadprofError(f"adakv floor must lie in [0, 1], got {self.floor}")


class AdaKV(SnapKV):
    """Feng et al. 2024: a layer's heads pool their budgets and keep the layer-wide top SnapKV scores,
    each head guaranteed a floor share (default 0.2) of its own budget."""

    name = "adakv"
    Options = AdaKVOptions
    options: AdaKVOptions

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        """Layer-wide top-k after each head's floor share."""
        return pooled_top_k(scores, budgets, window, self.options.floor)
