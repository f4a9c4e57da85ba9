"""The allocation policies: budgets `[L, H]` from head scores `[L, H]` and an `AllocConfig` (pure torch).

Every policy here except PyramidKV's integer schedule and HeadKV's `rounding="round"` gives integers that
sum to exactly `B x heads` (largest remainder), i.e. the bytes of uniform budgets B: a comparison between
policies is a comparison at equal memory. The registry `POLICY_FUNCTIONS` maps a policy name to its function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from headprof.allocation.integers import largest_remainder
from headprof.errors import HeadprofError

if TYPE_CHECKING:
    from headprof.allocation.config import AllocConfig


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


def score_weights(scores: torch.Tensor, temp: float) -> torch.Tensor:
    """`max(s, 0) ** temp` as float64, refused when a score is NaN/inf or the power overflows or underflows
    (HeadKV's code would silently fall back to uniform budgets)."""
    if not bool(scores.isfinite().all()):
        raise HeadprofError("head scores hold NaN or inf: HeadKV would silently fall back to uniform budgets")
    weights = scores.double().clamp(min=0) ** temp
    if not bool(weights.isfinite().all()) or (weights.sum() == 0 and bool((scores > 0).any())):
        raise HeadprofError(f"temp {temp} overflows or underflows the score weights s^temp; use a smaller temp")
    return weights


def shares(weights: torch.Tensor) -> torch.Tensor:
    """`weights` normalised to sum 1 (equal shares when they are all zero)."""
    total = weights.sum()
    return weights / total if total > 0 else torch.full_like(weights, 1 / weights.numel())


def headkv(scores: torch.Tensor, config: AllocConfig) -> torch.Tensor:
    """HeadKV S·M·N: each head keeps N - M, gives M = floor(N / beta) to a pool shared by score share S_i."""
    n_free = config.budget - config.window
    pooled = math.floor(n_free / config.beta_value)
    share = shares(score_weights(scores, config.temp))
    if config.rounding == "round":  # FYYFU/HeadKV: round(S_i * M * L * H + N - M) candidates, then the window
        return torch.round(share * (pooled * scores.numel()) + (n_free - pooled)).long() + config.window
    raw = (n_free - pooled) + share * pooled * scores.numel() + config.window
    return largest_remainder(raw, config.budget * scores.numel())


def headkv_floor(scores: torch.Tensor, config: AllocConfig) -> torch.Tensor:
    """HeadKV's pool with a per-layer floor: a share `layer_floor` of the pool goes to every layer alike (split
    among its heads by their share of the layer's scores), the rest by global score share as HeadKV.

    HeadKV's global pool lets a few layers take almost all of it; the floor keeps each layer a minimum
    (`layer_floor` 0: HeadKV; 1: one pool per layer, as AdaKV pools per layer, but shared by scores).
    """
    n_layers, n_heads = scores.shape
    n_free = config.budget - config.window
    pooled = math.floor(n_free / config.beta_value)
    weights = score_weights(scores, config.temp)
    pool = pooled * scores.numel()
    per_layer = torch.stack([shares(row) for row in weights]) * (config.layer_floor * pool / n_layers)
    raw = (n_free - pooled) + config.window + per_layer + shares(weights) * ((1 - config.layer_floor) * pool)
    return largest_remainder(raw, config.budget * scores.numel())


def duo(scores: torch.Tensor, config: AllocConfig) -> torch.Tensor:
    """A DuoAttention-style split (Xiao et al. 2024): the `top` best-scored heads share what the others leave;
    every other head keeps the window plus `sinks` entries (streaming heads: the recent window and a few
    entries the method's votes pick, usually the attention sinks), or `stream` entries when given: below the
    window, such a head keeps only its last `stream` tokens (a window of its own, small where the budget is
    small) while the top heads' votes still come from the whole window. The split comes from the scores (DuoAttention
    learns it); the total is `B x heads`, so on a prompt shorter than a top head's share that head keeps its
    whole context (the runtime hands the rest on, `integers.spill`)."""
    n = scores.numel()
    streaming = config.stream or config.window + config.sinks
    if config.top >= n:
        raise HeadprofError(f"duo: --top {config.top} must be below the number of budgeted heads ({n})")
    if streaming > config.budget:
        raise HeadprofError(f"duo: the other heads' budget ({streaming}) exceeds the budget {config.budget}")
    score_weights(scores, 1.0)  # the same finite-score check as HeadKV
    order = torch.sort(-scores.double().flatten(), stable=True).indices  # ties: lower head index first
    raw = torch.full((n,), float(streaming), dtype=torch.float64)
    raw[order[: config.top]] = (config.budget * n - streaming * (n - config.top)) / config.top
    return largest_remainder(raw.view_as(scores), config.budget * n)


def mixed_scores(retrieval: torch.Tensor, r2: torch.Tensor, weight: float) -> torch.Tensor:
    """`weight * retrieval + (1 - weight) * r2`, each normalised to sum 1 first (their scales differ: retrieval
    counts copy events, r2 is a mean attention share)."""
    return weight * shares(retrieval.double().clamp(min=0)) + (1 - weight) * shares(r2.double().clamp(min=0))


def _uniform(scores: torch.Tensor, config: AllocConfig) -> torch.Tensor:
    return uniform((scores.shape[0], scores.shape[1]), config)


def _pyramid(scores: torch.Tensor, config: AllocConfig) -> torch.Tensor:
    return pyramid((scores.shape[0], scores.shape[1]), config)


# policy -> budgets from (scores, config); "mix" is HeadKV's pool on `mixed_scores` (made by `allocate_artifact`)
POLICY_FUNCTIONS: dict[str, Callable[[torch.Tensor, AllocConfig], torch.Tensor]] = {
    "headkv": headkv,
    "uniform": _uniform,
    "pyramid": _pyramid,
    "duo": duo,
    "headkv-floor": headkv_floor,
    "mix": headkv,
}
