"""H2O (Zhang et al. 2023): heavy hitters by accumulated attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headprof.runtime.methods.base import Method
from headprof.runtime.selection import accumulated_scores


@dataclass(frozen=True)
class H2OOptions:
    """`block`: prompt queries per step of the accumulation (memory `[B, H, block, T]`, never `T x T`)."""

    block: int = 256


class H2O(Method):
    """Zhang et al. 2023: heavy hitters (attention summed over all prompt queries) plus the recent window."""

    name = "h2o"
    Options = H2OOptions
    options: H2OOptions

    def score(self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int) -> torch.Tensor:
        """Attention each position receives, summed over every prompt query."""
        return accumulated_scores(query, keys, scaling, self.options.block)
