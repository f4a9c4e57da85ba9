"""HeadKV (Fu et al. 2025): SnapKV-style selection under per-head budgets from head scores."""

from __future__ import annotations

import torch

from headprof.runtime.methods.snapkv import SnapKV
from headprof.runtime.selection import Selection, sorted_prefix_with_window


class HeadKV(SnapKV):
    """Fu et al. 2025, as FYYFU/HeadKV runs it: mean window votes (pooled), each head's candidates sorted and
    the first `b_i - w` kept plus the window; the cache stays whole when B > T (the reference's skip rule)."""

    name = "headkv"
    policy = "headkv"
    needs_scores = True
    window_reduce = "mean"

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        """A sorted prefix per head (`torch.sort`, as the reference)."""
        return sorted_prefix_with_window(scores, budgets, window)
