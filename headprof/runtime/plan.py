"""What a cache layer needs from its method, defined apart from both so that neither imports the other.

A `CompressedLayer` only scores its dense prompt, selects entries and (for a method that evicts during
decoding) hands itself to the method after each attention; the full `Method` (options, budget policy,
extra prefill passes) is the press's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from headprof.runtime.selection import Selection


class Compressor(Protocol):
    """The steps of compression a layer runs: importance of each prompt position, which entries to keep,
    and an optional update after each decode attention."""

    @property
    def evicts(self) -> bool:
        """Whether `evict` runs after every attention over a compressed layer."""
        ...

    def score(
        self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int, n_stored: int
    ) -> torch.Tensor:
        """Importance `[B, S, T]` of each prompt position for each stored head (higher = keep)."""
        ...

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        """Kept positions of each stored head, from `[B, S, T]` scores and `[S]` budgets."""
        ...

    def select_layers(self, scores: list[torch.Tensor], budgets: torch.Tensor, window: int) -> list[Selection]:
        """Kept positions of every layer at once, from per-layer scores and `[L, S]` budgets."""
        ...

    def evict(self, layer: Any, query: torch.Tensor, scaling: float) -> None:
        """Update a compressed layer after its attention."""
        ...


@dataclass
class LayerPlan:
    """What one layer keeps: `budgets[s]` entries (window included) for each of its S stored heads; or, for a
    sliding-window layer of the model (`sliding_window` > 0), its rolling window (budgets unused)."""

    method: Compressor
    budgets: torch.Tensor
    window: int
    sliding_window: int = 0
