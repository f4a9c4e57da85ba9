"""StreamingLLM (Xiao et al. 2024): attention sinks plus the most recent tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from headprof.runtime.methods.base import Method


@dataclass(frozen=True)
class StreamingLLMOptions:
    """`sinks`: the first tokens every head keeps."""

    sinks: int = 4


class StreamingLLM(Method):
    """Xiao et al. 2024: the first `sinks` tokens (attention sinks) and the most recent `B - sinks`."""

    name = "streamingllm"
    Options = StreamingLLMOptions
    options: StreamingLLMOptions

    def score(self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int) -> torch.Tensor:
        """Recency, with the sinks ranked above everything."""
        batch, n_heads, total = query.shape[0], query.shape[1], keys.shape[2]
        recency = torch.arange(total, device=keys.device, dtype=torch.float32)
        recency[: self.options.sinks] = float("inf")  # kept before anything else, the window included
        return recency.expand(batch, n_heads, total)
