"""PyramidKV (Cai et al. 2024): SnapKV selection under pyramid-shaped layer budgets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from headprof.allocation import pyramid
from headprof.runtime.methods.snapkv import SnapKV

if TYPE_CHECKING:
    from headprof.runtime.plan import BudgetPlan


class PyramidKV(SnapKV):
    """Cai et al. 2024: SnapKV selection, budgets falling from the bottom layer to the top (beta 20), with
    KVCache-Factory's schedule recomputed for each prompt's length (uniform for short prompts)."""

    name = "pyramidkv"
    policy = "pyramid"

    def budgets_for(self, plan: BudgetPlan, prompt_tokens: int) -> torch.Tensor:
        """The reference's schedule for this prompt length; an allocation artifact's budgets as they are."""
        if plan.config is not None and plan.config.policy == "pyramid":
            budgeted = (plan.budgets > 0).any(dim=1)  # a model's sliding-window layers have 0 rows
            budgets = torch.zeros_like(plan.budgets)
            shape = (int(budgeted.sum()), plan.budgets.shape[1])
            budgets[budgeted] = pyramid(shape, plan.config, context=prompt_tokens)
            return budgets
        return super().budgets_for(plan, prompt_tokens)
