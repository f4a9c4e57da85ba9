import torch

from headprof.runtime.methods.base import Method, register


@register
class StreamingLLM(Method):
    """Xiao et al. 2024: the first `sinks` tokens (attention sinks) and the most recent `B - sinks`."""

    name = "streamingllm"

    def scores(self, query: torch.Tensor, keys: torch.Tensor, scaling: float, layer) -> torch.Tensor:
        batch, n_heads, total = query.shape[0], query.shape[1], keys.shape[2]
        recency = torch.arange(total, device=keys.device, dtype=torch.float32)
        recency[: self.options.sinks] = float("inf")  # kept before anything else, the window included
        return recency.expand(batch, n_heads, total)
