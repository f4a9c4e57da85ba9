"""How many entries each layer and head keeps: from one budget, an allocation artifact or a score artifact."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headprof.allocation import AllocConfig, allocate
from headprof.artifacts import AllocArtifact, ScoreArtifact, check_model
from headprof.errors import HeadprofError
from headprof.models.spec import ModelInfo
from headprof.runtime.methods.base import Method


@dataclass(frozen=True)
class BudgetPlan:
    """Budgets `[L, S]` (entries per stored head, window included; S = KV heads or query heads by `gqa`).

    `budgets` is None for a method that does not compress. Rows of a model's sliding-window layers are 0:
    those layers keep their rolling window and are not budgeted. `budget` is the nominal per-head budget B
    the budgets were made for (the references compare it with the prompt length); `config` is the policy
    that made them when they came from the method's own policy (PyramidKV recomputes its schedule per prompt).
    """

    budgets: torch.Tensor | None
    window: int
    gqa: str
    budget: int = 0
    config: AllocConfig | None = None


def default_method(has_budgets: bool) -> str:
    """The method a command uses when none is named: HeadKV when per-head budgets or scores are given, else SnapKV."""
    return "headkv" if has_budgets else "snapkv"


def plan_budgets(
    method: Method,
    info: ModelInfo,
    budget: int = 128,
    *,
    allocation: AllocArtifact | None = None,
    scores: ScoreArtifact | None = None,
    gqa: str = "kv",
    window: int = 32,
    beta: float | None = None,
    temp: float = 1.0,
    score_method: str = "r2",
    rounding: str = "largest-remainder",
) -> BudgetPlan:
    """Budgets for `method` on the model `info` describes.

    `allocation` (an `alloc-*.safetensors` artifact; its layout and window are used), or `scores` +
    `budget` (HeadKV allocation on the fly), or the method's own policy at `budget` (uniform;
    PyramidKV's pyramid, recomputed for each prompt's length by `Method.budgets_for`). `gqa="kv"`
    stores one selection per KV head (memory-honest); `gqa="query"` stores per query head,
    repeating shared KV heads (the HeadKV paper's layout). `rounding`: HeadKV's, see `AllocConfig`.
    """
    if not method.compresses:
        return BudgetPlan(None, window, gqa, budget)
    if allocation is not None:
        check_model(allocation.model, info, "allocation")
        budgets = allocation.budgets.long()
        nominal = int(allocation.meta.get("budget", round(float(budgets.float().mean()))))
        return BudgetPlan(budgets, int(allocation.meta.get("window", window)), allocation.gqa, nominal)
    config = AllocConfig(budget, method.policy, window, beta, temp, gqa, rounding)
    config.validate()
    if method.policy == "headkv":
        if scores is None:
            raise HeadprofError("headkv needs an allocation artifact (allocation=) or a score artifact (scores=)")
        check_model(scores.model, info, "score artifact")
        budgets = allocate(scores.scores(score_method), config, info.n_kv_heads, info.global_layers)
        return BudgetPlan(budgets, window, gqa, budget)
    budgets = allocate(torch.zeros(info.n_layers, info.n_heads), config, info.n_kv_heads, info.global_layers)
    return BudgetPlan(budgets, window, gqa, budget, config)
