"""Per-head KV budgets from head scores (METHOD.md §3).

Every policy keeps the last `w` prompt tokens in every head and distributes the rest. Budgets are
integers; HeadKV's formula gives fractions, rounded with the largest-remainder method (ties go to the
lower head index), so its total is exactly `B * number_of_heads`; `rounding="round"` rounds each head on
its own (half to even) as the HeadKV code does, within one entry of it per head, the total a few off.
PyramidKV follows KVCache-Factory's integer schedule, whose total is slightly above that (its integer step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headprof import validation
from headprof.artifacts import AllocArtifact, ScoreArtifact
from headprof.errors import HeadprofError
from headprof.heads import kv_view
from headprof.models.spec import ModelInfo

POLICIES = ("headkv", "uniform", "pyramid")
ROUNDINGS = ("largest-remainder", "round")
DEFAULT_BETA = {"headkv": 1.2, "pyramid": 20.0, "uniform": 1.0}
GQA_LAYOUTS = ("query", "kv")
ROUNDING = {
    "headkv": "largest remainder, ties to lower head index",
    "headkv-round": "torch.round per head (half to even), as FYYFU/HeadKV",
    "uniform": "none",
    "pyramid": "KVCache-Factory integer schedule (prompts longer than the bottom layer's budget)",
}


@dataclass(frozen=True)
class AllocConfig:
    """Parameters of one allocation: mean budget `B`, policy, window `w`, policy knobs, GQA layout."""

    budget: int
    policy: str = "headkv"
    window: int = 32
    beta: float | None = None
    temp: float = 1.0
    gqa: str = "query"
    rounding: str = "largest-remainder"

    @property
    def beta_value(self) -> float:
        return DEFAULT_BETA[self.policy] if self.beta is None else self.beta

    def validate(self, max_context: int = 0) -> None:
        if self.policy not in POLICIES:
            raise HeadprofError(f"unknown policy '{self.policy}' ({', '.join(POLICIES)})")
        if self.rounding not in ROUNDINGS:
            raise HeadprofError(f"unknown rounding '{self.rounding}' ({', '.join(ROUNDINGS)})")
        if self.gqa not in GQA_LAYOUTS:
            raise HeadprofError(f"unknown gqa layout '{self.gqa}' ({', '.join(GQA_LAYOUTS)})")
        validation.budget_and_window(self.budget, self.window)
        if max_context and self.budget > max_context:
            raise HeadprofError(f"budget {self.budget} is larger than any context the model takes ({max_context})")
        validation.finite(self.temp, "temp")
        if self.beta is not None:
            validation.finite(self.beta, "beta")
        if self.beta_value < 1:
            raise HeadprofError(f"beta must be >= 1, got {self.beta_value}")
        if self.temp <= 0:
            raise HeadprofError(f"temp must be positive, got {self.temp}")


def largest_remainder(raw: torch.Tensor, total: int) -> torch.Tensor:
    """Round non-negative reals to integers summing to `total`: floor, then +1 to the largest fractions."""
    raw = raw.double()
    base = torch.floor(raw)
    short = total - int(base.sum().item())
    if short < 0 or short > raw.numel():
        raise HeadprofError(f"cannot round budgets summing to {float(raw.sum()):.1f} to a total of {total}")
    frac = (raw - base).flatten()
    # Stable sort on -frac: equal fractions keep head order, so the result is deterministic.
    order = torch.sort(-frac, stable=True).indices[:short]
    flat = base.flatten().long()
    flat[order] += 1
    return flat.view_as(raw)


def uniform(shape: tuple[int, int], config: AllocConfig) -> torch.Tensor:
    """SnapKV's budgets: every head keeps `B`."""
    return torch.full(shape, config.budget, dtype=torch.long)


def pyramid(shape: tuple[int, int], config: AllocConfig, context: int | None = None) -> torch.Tensor:
    """PyramidKV's schedule as KVCache-Factory computes it (`PyramidKVCluster.update_kv`), in integers.

    With B' = B - w: the top layer keeps `min = B' // beta` candidates, the bottom `max = 2 B' - min`,
    layer l keeps `max - l * ((max - min) // (L - 1))`, each plus the window. The integer step makes the
    total slightly above L * B (the reference's rule, kept as it is). With a prompt length T (`context`):
    no compression when T < B (every head gets B > T); plain uniform B when T < 2 B'; `max` capped at
    T - w (and `min` raised to keep their sum) when `max >= T - w`. Without it: the schedule of any
    prompt longer than `max + w`, which does not depend on T.
    """
    n_layers, n_heads = shape
    free = config.budget - config.window
    if context is not None and context < config.budget:
        return torch.full(shape, config.budget, dtype=torch.long)
    if n_layers == 1 or (context is not None and context < 2 * free):
        return torch.full(shape, config.budget, dtype=torch.long)
    low = int(free // config.beta_value)
    high = 2 * free - low
    if context is not None and high >= context - config.window:
        high = context - config.window
        low = 2 * free - high
    step = (high - low) // (n_layers - 1)
    per_layer = high - step * torch.arange(n_layers, dtype=torch.long)
    return (per_layer[:, None] + config.window).expand(n_layers, n_heads).clone()


def headkv(scores: torch.Tensor, config: AllocConfig) -> torch.Tensor:
    """HeadKV S·M·N: each head keeps N - M, gives M = floor(N / beta) to a pool shared by score share S_i."""
    n_free = config.budget - config.window
    pooled = math.floor(n_free / config.beta_value)
    if not bool(scores.isfinite().all()):
        raise HeadprofError("head scores hold NaN or inf: HeadKV would silently fall back to uniform budgets")
    weights = scores.double().clamp(min=0) ** config.temp
    if not bool(weights.isfinite().all()) or (weights.sum() == 0 and bool((scores > 0).any())):
        raise HeadprofError(f"temp {config.temp} overflows or underflows the score weights s^temp; use a smaller temp")
    share = weights / weights.sum() if weights.sum() > 0 else torch.full_like(weights, 1 / weights.numel())
    if config.rounding == "round":  # FYYFU/HeadKV: round(S_i * M * L * H + N - M) candidates, then the window
        return torch.round(share * (pooled * scores.numel()) + (n_free - pooled)).long() + config.window
    raw = (n_free - pooled) + share * pooled * scores.numel() + config.window
    return largest_remainder(raw, config.budget * scores.numel())


def allocate(
    scores: torch.Tensor, config: AllocConfig, n_kv_heads: int | None = None, global_layers: list[int] | None = None
) -> torch.Tensor:
    """Budgets `[L, H]` for query-head scores `[L, Hq]`; with `gqa="kv"`, per KV head from group sums.

    `global_layers`: the layers budgets are allocated over (default: all). The others are a model's
    sliding-window layers, whose cache is already bounded by their window: their rows are 0 (not
    budgeted; the runtime keeps their rolling window), and the policy runs on the global rows alone,
    so the total is exactly `B x` the global heads.
    """
    config.validate()
    if config.gqa == "kv":
        if not n_kv_heads or scores.shape[1] % n_kv_heads:
            raise HeadprofError(f"cannot group {scores.shape[1]} query heads into {n_kv_heads} KV heads")
        scores = kv_view(scores, n_kv_heads)
    rows = list(range(scores.shape[0])) if global_layers is None else list(global_layers)
    budgets = torch.zeros(scores.shape, dtype=torch.long)
    if rows:
        budgets[rows] = _policy(scores[rows], config)
    return budgets


def _policy(scores: torch.Tensor, config: AllocConfig) -> torch.Tensor:
    shape = (scores.shape[0], scores.shape[1])
    if config.policy == "uniform":
        return uniform(shape, config)
    if config.policy == "pyramid":
        return pyramid(shape, config)
    return headkv(scores, config)


def floor_of(config: AllocConfig, n_layers: int) -> int:
    """The smallest budget the policy can give a head."""
    n_free = config.budget - config.window
    if config.policy == "headkv":
        return n_free - math.floor(n_free / config.beta_value) + config.window
    if config.policy == "pyramid":
        return int(pyramid((n_layers, 1), config).min())
    return config.budget


def kv_bytes(budgets: torch.Tensor, head_dim: int, bytes_per_value: int, context: int) -> int:
    """Bytes of a cache holding min(b_i, T) entries per stored head (keys and values)."""
    return 2 * head_dim * bytes_per_value * int(budgets.clamp(max=context).sum())


def window_kv_bytes(model: ModelInfo, bytes_per_value: int, context: int) -> int:
    """Bytes of the sliding-window layers' rolling windows: the last `w - 1` tokens per KV head, as
    transformers keeps them (with the new token, every query sees `w` positions)."""
    kept = min(context, max(model.sliding_window - 1, 0))
    return 2 * len(model.window_layers) * model.n_kv_heads * kept * model.head_dim * bytes_per_value


def full_kv_bytes(model: ModelInfo, bytes_per_value: int, context: int) -> int:
    """Bytes of the uncompressed cache at `context` tokens (sliding-window layers hold their window only):
    the baseline every budget is compared to."""
    n_global = len(model.global_layers)
    full = 2 * n_global * model.n_kv_heads * context * model.head_dim * bytes_per_value
    return full + window_kv_bytes(model, bytes_per_value, context)


def allocate_artifact(scores: ScoreArtifact, config: AllocConfig, score_method: str, source: Path) -> AllocArtifact:
    """Budgets for a score artifact, with the metadata that ties them to it (source hash, parameters, rounding)."""
    config.validate(scores.model.max_context)
    model = scores.model
    if config.policy == "headkv" and not bool(scores.counted.any()):
        raise HeadprofError(
            f"the score artifact {source} has no counted probe (of {len(scores.probe_ids)}): its head scores are "
            "all zero, and HeadKV budgets from them would be uniform; score more probes or use --policy uniform"
        )
    if not model.global_layers:
        raise HeadprofError(f"every layer of {model.model_id} is a sliding-window layer: there is nothing to budget")
    budgets = allocate(scores.scores(score_method), config, model.n_kv_heads, model.global_layers)
    if model.max_context and int(budgets.max()) > model.max_context:
        raise HeadprofError(
            f"{config.policy} budgets at {config.budget} give a head {int(budgets.max())} entries, beyond the "
            f"model's {model.max_context} positions; use a smaller budget"
        )
    rounding_key = "headkv-round" if config.policy == "headkv" and config.rounding == "round" else config.policy
    meta = {
        "policy": config.policy,
        "budget": config.budget,
        "window": config.window,
        "beta": config.beta_value,
        "temp": config.temp,
        "gqa": config.gqa,
        "score_method": score_method,
        "source_scores": str(source),
        "source_scores_sha256": scores.meta["sha256"],
        "rounding": ROUNDING[rounding_key],
        "floor": floor_of(config, len(model.global_layers)),
        "sliding_layers": model.window_layers,
    }
    return AllocArtifact(scores.model, budgets, meta)


@dataclass(frozen=True)
class BudgetSummary:
    """What a set of budgets costs at a context length, against the other layout and the full cache."""

    policy: str
    gqa: str
    budget: int
    window: int
    total: int
    heads: int
    min: int
    max: int
    floor: int
    at_floor: float
    stored: int
    kv_bytes: int
    kv_bytes_other_layout: int
    kv_bytes_full: int
    context: int
    bytes_per_value: int
    layers: list[tuple[int, int, int]]  # per layer: min, median, max budget
    sliding_layers: list[int]  # not budgeted: rolling windows

    def payload(self) -> dict[str, Any]:
        """The `allocate --json` fields."""
        keys = (
            "policy",
            "gqa",
            "total",
            "min",
            "max",
            "at_floor",
            "kv_bytes",
            "kv_bytes_other_layout",
            "kv_bytes_full",
            "context",
            "sliding_layers",
        )
        return {key: getattr(self, key) for key in keys}


def summarize_budgets(
    budgets: torch.Tensor, config: AllocConfig, model: ModelInfo, context: int, bytes_per_value: int
) -> BudgetSummary:
    """KV bytes of `budgets` at `context` tokens, of uniform budgets in the other GQA layout, and of the full cache.

    Budget statistics cover the global layers; every byte count includes the sliding-window layers' windows.
    """
    other_heads = model.n_heads if config.gqa == "kv" else model.n_kv_heads
    n_global = len(model.global_layers)
    rows = budgets[model.global_layers]
    floor = floor_of(config, n_global)
    windows = window_kv_bytes(model, bytes_per_value, context)
    return BudgetSummary(
        policy=config.policy,
        gqa=config.gqa,
        budget=config.budget,
        window=config.window,
        total=int(rows.sum()),
        heads=rows.numel(),
        min=int(rows.min()) if rows.numel() else 0,
        max=int(rows.max()) if rows.numel() else 0,
        floor=floor,
        at_floor=round(float((rows <= floor).float().mean()), 4) if rows.numel() else 0.0,
        stored=int(rows.clamp(max=context).sum()),
        kv_bytes=kv_bytes(rows, model.head_dim, bytes_per_value, context) + windows,
        kv_bytes_other_layout=2
        * model.head_dim
        * bytes_per_value
        * n_global
        * other_heads
        * min(config.budget, context)
        + windows,
        kv_bytes_full=full_kv_bytes(model, bytes_per_value, context),
        context=context,
        bytes_per_value=bytes_per_value,
        layers=[(int(row.min()), int(row.median()), int(row.max())) for row in budgets],
        sliding_layers=model.window_layers,
    )
