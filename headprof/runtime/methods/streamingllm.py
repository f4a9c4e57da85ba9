"""StreamingLLM (Xiao et al. 2024): attention sinks plus the most recent tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headprof.errors import HeadprofError
from headprof.runtime.methods.base import Method
from headprof.runtime.selection import Selection


@dataclass(frozen=True)
class StreamingLLMOptions:
    """`sinks`: the first tokens every head keeps (4 in the paper, KVCache-Factory and kvpress)."""

    sinks: int = 4

    def __post_init__(self) -> None:
        if self.sinks < 0:
            raise HeadprofError(f"sinks must be >= 0, got {self.sinks}")


class StreamingLLM(Method):
    """Xiao et al. 2024: the first `sinks` tokens (attention sinks) and the most recent `B - sinks`.

    As in KVCache-Factory (window = B - 4) the recent part is the budget's rest, not the observation window.
    """

    name = "streamingllm"
    Options = StreamingLLMOptions
    options: StreamingLLMOptions

    def score(
        self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int, n_stored: int
    ) -> torch.Tensor:
        """Position only: no attention is computed."""
        return torch.zeros(keys.shape[0], n_stored, keys.shape[2], device=keys.device)

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        """Sinks first, then the newest positions."""
        batch, n_stored, total = scores.shape
        counts = budgets.to(scores.device).long().repeat(batch).clamp(max=total)[:, None]
        position = torch.arange(total, device=scores.device)[None, :]
        sinks = torch.clamp(counts, max=self.options.sinks)
        keep = (position < sinks) | (position >= total - (counts - sinks))
        return Selection.from_mask(keep)
