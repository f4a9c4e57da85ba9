"""SnapKV (Li et al. 2024) and its options, shared by the methods that only change its budgets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headprof.errors import HeadprofError
from headprof.runtime.methods.base import Method
from headprof.runtime.selection import window_scores

POOLINGS = ("max", "avg")


@dataclass(frozen=True)
class SnapKVOptions:
    """`kernel`: 1-D pooling width over positions (odd); `pooling`: max | avg."""

    kernel: int = 7
    pooling: str = "max"

    def __post_init__(self) -> None:
        # an even kernel would shift the pooled scores by half a position
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise HeadprofError(f"pooling kernel must be an odd number >= 1, got {self.kernel}")
        if self.pooling not in POOLINGS:
            raise HeadprofError(f"unknown pooling '{self.pooling}' ({', '.join(POOLINGS)})")


class SnapKV(Method):
    """Li et al. 2024: the last `w` prompt queries vote (mean attention, pooled); every head keeps `B`."""

    name = "snapkv"
    Options = SnapKVOptions
    options: SnapKVOptions

    def score(self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int) -> torch.Tensor:
        """Window votes, pooled over candidate positions."""
        return window_scores(query, keys, scaling, window, self.options.kernel, self.options.pooling)
