"""HeadKV (Fu et al. 2025): SnapKV-style selection under per-head budgets from head scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from headprof.allocation import spill
from headprof.runtime.methods.snapkv import SnapKV, SnapKVOptions
from headprof.runtime.selection import Selection, sorted_prefix_with_window

if TYPE_CHECKING:
    from headprof.runtime.budgets import BudgetPlan


@dataclass(frozen=True)
class HeadKVOptions(SnapKVOptions):
    """SnapKV's options plus `spill`: a head whose budget exceeds the prompt hands the excess to the other heads
    (`allocation.spill`), so the cache holds exactly the bytes of uniform B at that prompt (what a comparison
    at equal bytes needs: `evaluate` and `tune` set it); False (the default) keeps FYYFU/HeadKV's rule, where
    that excess is simply not spent, so the default keeps what the reference keeps."""

    spill: bool = False


class HeadKV(SnapKV):
    """Fu et al. 2025, as FYYFU/HeadKV runs it: mean window votes (pooled), each head's candidates sorted and
    the first `b_i - w` kept plus the window; the cache stays whole when B > T (the reference's skip rule)."""

    name = "headkv"
    Options = HeadKVOptions
    options: HeadKVOptions
    policy = "headkv"
    needs_scores = True
    window_reduce = "mean"

    def budgets_for(self, plan: BudgetPlan, prompt_tokens: int) -> torch.Tensor:
        """The reference's budgets; with `spill`, the excess of heads capped at the prompt goes to the others."""
        budgets = super().budgets_for(plan, prompt_tokens)
        if not self.options.spill or prompt_tokens < plan.budget:
            return budgets
        return spill(budgets, prompt_tokens)

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        """A sorted prefix per head (`torch.sort`, as the reference); a head whose budget is below the window
        (the duo policy's streaming heads with `stream < w`) keeps its last `b_i` positions only: a window of
        its own size, while the votes of the others still come from the whole window."""
        short = budgets.to(scores.device).long() < window
        if not bool(short.any()):
            return sorted_prefix_with_window(scores, budgets, window)
        chosen = sorted_prefix_with_window(scores, budgets.clamp(min=window), window)
        batch, n_stored, total = scores.shape
        rows = torch.repeat_interleave(torch.arange(batch * n_stored, device=scores.device), chosen.lengths)
        keep = torch.zeros(batch * n_stored, total, dtype=torch.bool, device=scores.device)
        keep[rows, chosen.positions] = True
        own = budgets.to(scores.device).long().clamp(max=total).repeat(batch)
        recent = torch.arange(total, device=scores.device)[None, :] >= total - own[:, None]
        short_rows = short.repeat(batch)
        keep[short_rows] = recent[short_rows]
        return Selection.from_mask(keep)
