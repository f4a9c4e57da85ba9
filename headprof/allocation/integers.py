"""Integer budgets from real-valued shares: exact totals, deterministic ties (pure torch, no model)."""

from __future__ import annotations

import torch

from headprof.errors import HeadprofError


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


def spill(budgets: torch.Tensor, cap: int) -> torch.Tensor:
    """Budgets whose heads above `cap` (the prompt length) keep `cap` and hand their excess to the other heads.

    A head cannot store more entries than the prompt has, so without this a budget above the prompt is spent
    on nothing and the cache holds fewer bytes than uniform budgets of the same mean would (HeadKV at B=512 on
    a 1k-token prompt: 18.5 vs 23.3 MiB). The excess goes to the uncapped heads in proportion to their
    budgets (a head pushed to the cap by it is capped in turn), so the total stays `sum(budgets)` (at most
    `cap` per head) and the ranking between heads is kept. Zero rows (sliding-window layers) stay zero.
    """
    budgets = budgets.long()
    live = budgets > 0
    if not bool((budgets > cap).any()):
        return budgets
    total = min(int(budgets.sum()), cap * int(live.sum()))
    values = budgets.double()
    capped = budgets >= cap
    while True:
        free = live & ~capped
        rest = total - cap * int(capped.sum())
        scale = rest / float(values[free].sum()) if bool(free.any()) else 0.0
        newly = free & (values * scale >= cap)
        if not bool(newly.any()):
            break
        capped |= newly
    raw = torch.where(capped, torch.full_like(values, cap), values * scale) * live
    return largest_remainder(raw, total)
