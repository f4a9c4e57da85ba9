import torch

from headprof.runtime.methods.base import Method, register
from headprof.runtime.selection import window_scores


@register
class SnapKV(Method):
    """Li et al. 2024: the last `w` prompt queries vote (mean attention, pooled); every head keeps `B`."""

    name = "snapkv"

    def scores(self, query: torch.Tensor, keys: torch.Tensor, scaling: float, layer) -> torch.Tensor:
        return window_scores(query, keys, scaling, layer.plan.window, self.options.kernel, self.options.pooling)
