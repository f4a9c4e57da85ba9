"""What a cache layer needs from its method, defined apart from both so that neither imports the other.

A `CompressedLayer` only scores its dense prompt and selects entries; the full `Method` (options,
budget policy, extra prefill pass) is the press's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from headprof.runtime.selection import Selection


class Compressor(Protocol):
    """The two pure steps of compression: importance of each prompt position, then which entries to keep."""

    group_reduce: str  # how the g query heads of a KV group share one selection: "mean" | "max"

    def score(self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int) -> torch.Tensor:
        """Importance `[B, Hq, T]` of each prompt position for each query head (higher = keep)."""
        ...

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        """Kept positions of each stored head, from `[B, S, T]` scores and `[S]` budgets."""
        ...


@dataclass
class LayerPlan:
    """What one layer keeps: `budgets[s]` entries (window included) for each of its S stored heads; or, for a
    sliding-window layer of the model (`sliding_window` > 0), its rolling window (budgets unused)."""

    method: Compressor
    budgets: torch.Tensor
    window: int
    sliding_window: int = 0
