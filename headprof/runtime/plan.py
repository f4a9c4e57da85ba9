"""`BudgetPlan`: the budgets of every layer and head a press compresses to.

Defined below the methods and `runtime/budgets.py` (which makes plans from a `BudgetSource`): a method reads a
plan (`Method.budgets_for`) without importing what makes it, so the two import in one direction only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headprof.allocation import AllocConfig


@dataclass(frozen=True)
class BudgetPlan:
    """Budgets `[L, S]` (entries per stored head, window included; S = KV heads or query heads by `gqa`).

    `budgets` is None for a method that does not compress. Rows of a model's sliding-window layers are 0:
    those layers keep their rolling window and are not budgeted. `budget` is the nominal per-head budget B
    the budgets were made for (the references compare it with the prompt length); `config` is the policy
    that made them when they came from the method's own policy (PyramidKV recomputes its schedule per prompt).
    `votes`: the voting span an allocation artifact was made for (`AllocConfig.votes`; 0: the window).
    """

    budgets: torch.Tensor | None
    window: int
    gqa: str
    budget: int = 0
    config: AllocConfig | None = None
    votes: int = 0
