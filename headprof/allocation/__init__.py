"""Per-head KV budgets from head scores (METHOD.md §3).

Every policy keeps the last `w` prompt tokens in every head and distributes the rest. Budgets are
integers; HeadKV's formula gives fractions, rounded with the largest-remainder method (ties go to the
lower head index), so its total is exactly `B * number_of_heads`; `rounding="round"` rounds each head on
its own (half to even) as the HeadKV code does, within one entry of it per head, the total a few off.
PyramidKV follows KVCache-Factory's integer schedule, whose total is slightly above that (its integer step).
The policies live in `policies.py` (one function each, `POLICY_FUNCTIONS`), their parameters in `config.py`
(`AllocConfig`), the integer arithmetic they share in `integers.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headprof.allocation.config import POLICIES, ROUNDING, AllocConfig
from headprof.allocation.integers import largest_remainder, spill
from headprof.allocation.policies import POLICY_FUNCTIONS, headkv, mixed_scores, pyramid, uniform
from headprof.artifacts import AllocArtifact, ScoreArtifact
from headprof.errors import HeadprofError
from headprof.heads import kv_view
from headprof.models.spec import ModelInfo


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
    return POLICY_FUNCTIONS[config.policy](scores, config)


def floor_of(config: AllocConfig, n_layers: int) -> int:
    """The smallest budget the policy can give a head."""
    n_free = config.budget - config.window
    if config.policy in ("headkv", "headkv-floor", "mix"):
        return n_free - math.floor(n_free / config.beta_value) + config.window
    if config.policy == "duo":
        return config.stream or config.window + config.sinks
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
    if config.policy not in ("uniform", "pyramid") and not bool(scores.counted.any()):
        raise HeadprofError(
            f"the score artifact {source} has no counted probe (of {len(scores.probe_ids)}): its head scores are "
            "all zero, and HeadKV budgets from them would be uniform; score more probes or use --policy uniform"
        )
    if not model.global_layers:
        raise HeadprofError(f"every layer of {model.model_id} is a sliding-window layer: there is nothing to budget")
    if config.policy == "mix":  # HeadKV's pool on both scores at once
        score_method = "mix"
        head_scores = mixed_scores(scores.scores("retrieval"), scores.scores("r2"), config.mix)
    else:
        head_scores = scores.scores(score_method)
    budgets = allocate(head_scores, config, model.n_kv_heads, model.global_layers)
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
        "parameters": config.parameters(),
        "score_method": score_method,
        "source_scores": str(source),
        "source_scores_sha256": scores.meta["sha256"],
        "rounding": ROUNDING[rounding_key],
        "floor": floor_of(config, len(model.global_layers)),
        "sliding_layers": model.window_layers,
    }
    if config.votes:  # only when set: artifacts of the references' rule stay as they were
        meta["votes"] = config.votes
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


__all__ = [
    "POLICIES",
    "AllocConfig",
    "BudgetSummary",
    "allocate",
    "allocate_artifact",
    "floor_of",
    "full_kv_bytes",
    "headkv",
    "kv_bytes",
    "largest_remainder",
    "pyramid",
    "spill",
    "summarize_budgets",
    "uniform",
    "window_kv_bytes",
]
