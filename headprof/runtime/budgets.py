"""How many entries each layer and head keeps: a `BudgetSource` (one budget, a compression ratio, an allocation
artifact or a score artifact, and the policy's parameters) made into a `BudgetPlan` for a method and a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from headprof.allocation import AllocConfig, allocate
from headprof.artifacts import AllocArtifact, ScoreArtifact, check_model
from headprof.errors import HeadprofError
from headprof.models.spec import ModelInfo
from headprof.runtime.methods.base import Method
from headprof.runtime.plan import BudgetPlan

__all__ = ["BudgetPlan", "BudgetSource", "default_method", "plan_budgets", "ratio_budget", "with_votes"]


@dataclass(frozen=True)
class BudgetSource:
    """Where a press's budgets come from; the one list of these parameters (`compressed`, `build_press`,
    `plan_budgets`, the CLI all pass one of these).

    `allocation` (an `alloc-*.safetensors` artifact; its layout and window are used), or `scores` + `budget`
    (HeadKV allocation on the fly, `score_method` the head score it reads, `beta`/`temp`/`rounding` as in
    `AllocConfig`), or the method's own policy at `budget` (uniform; PyramidKV's pyramid, recomputed for each
    prompt's length by `Method.budgets_for`). `compression_ratio` (kvpress's meaning, instead of `budget`): the
    share of each prompt's KV entries dropped, so a prompt of T tokens gets a mean budget of
    `int(T * (1 - ratio))` per head (at least the window + 1).

    `gqa="kv"` (the default) stores one selection per KV head: the layout whose bytes are what a GQA model
    really holds, so budgets compare across methods at equal memory; `gqa="query"` stores per query head,
    repeating shared KV heads (the HeadKV paper's layout, `--gqa query`). An allocation artifact brings its own.
    """

    budget: int = 128
    allocation: AllocArtifact | None = None
    scores: ScoreArtifact | None = None
    gqa: str = "kv"
    window: int = 32
    beta: float | None = None
    temp: float = 1.0
    score_method: str = "r2"
    rounding: str = "largest-remainder"
    compression_ratio: float | None = None

    def plan(self, method: Method, info: ModelInfo) -> BudgetPlan:
        """The budgets `method` starts from on the model `info` describes (with a compression ratio: those of a
        prompt of no more than the window + 1 tokens; `plan_for` gives each prompt's)."""
        if not method.compresses:
            return BudgetPlan(None, self.window, self.gqa, self.budget)
        if self.allocation is not None:
            check_model(self.allocation.model, info, "allocation")
            budgets = self.allocation.budgets.long()
            nominal = int(self.allocation.meta.get("budget", round(float(budgets.float().mean()))))
            window = int(self.allocation.meta.get("window", self.window))
            votes = int(self.allocation.meta.get("votes", 0))
            return BudgetPlan(budgets, window, self.allocation.gqa, nominal, votes=votes)
        budget = self.window + 1 if self.compression_ratio is not None else self.budget
        config = AllocConfig(budget, method.policy, self.window, self.beta, self.temp, self.gqa, self.rounding)
        config.validate()
        if method.needs_scores:
            if self.scores is None:
                raise HeadprofError(
                    f"{method.name} needs an allocation artifact (allocation=) or a score artifact (scores=)"
                )
            check_model(self.scores.model, info, "score artifact")
            budgets = allocate(self.scores.scores(self.score_method), config, info.n_kv_heads, info.global_layers)
            return BudgetPlan(budgets, self.window, self.gqa, budget)
        zeros = torch.zeros(info.n_layers, info.n_heads)
        budgets = allocate(zeros, config, info.n_kv_heads, info.global_layers)
        return BudgetPlan(budgets, self.window, self.gqa, budget, config)

    def plan_for(self, method: Method, info: ModelInfo) -> Callable[[int], BudgetPlan] | None:
        """Budgets that follow each prompt's length (a compression ratio); None when they do not."""
        if self.compression_ratio is None:
            return None
        mean = ratio_budget(self.compression_ratio, self.window, self.allocation is not None)
        return lambda tokens: replace(self, budget=mean(tokens), compression_ratio=None).plan(method, info)


def plan_budgets(method: Method, info: ModelInfo, budget: int = 128, **source: Any) -> BudgetPlan:
    """Budgets for `method` on the model `info` describes: `BudgetSource(budget, **source).plan(...)`."""
    return BudgetSource(budget, **source).plan(method, info)


def with_votes(method: Method, votes: int) -> Method:
    """The method voting over the span an allocation artifact was made for (`BudgetPlan.votes`), unless its own
    options already set one; a method without votes (no window votes to widen) refuses such an artifact."""
    if not votes:
        return method
    if "votes" not in {field.name for field in fields(method.Options)}:
        raise HeadprofError(f"the allocation was made for votes={votes}, which {method.name} does not take")
    if method.options.votes:
        return method
    return type(method)(replace(method.options, votes=votes))


def default_method(has_budgets: bool) -> str:
    """The method a command uses when none is named: HeadKV when per-head budgets or scores are given, else SnapKV."""
    return "headkv" if has_budgets else "snapkv"


def ratio_budget(compression_ratio: float, window: int, has_allocation: bool = False) -> Callable[[int], int]:
    """The mean per-head budget kvpress's `compression_ratio` gives a prompt of T tokens: `int(T * (1 - r))`
    entries kept, never fewer than the window + 1 (a prompt shorter than that is kept whole)."""
    if not isinstance(compression_ratio, (int, float)) or not 0 <= compression_ratio < 1:
        raise HeadprofError(
            f"compression_ratio must be in [0, 1) (the share of KV entries dropped), got {compression_ratio}"
        )
    if has_allocation:
        raise HeadprofError(
            "compression_ratio sets each prompt's budget, an allocation artifact fixes them: give scores= instead"
        )
    return lambda tokens: max(window + 1, int(tokens * (1 - compression_ratio)))  # kvpress: int(q_len * (1 - r))
