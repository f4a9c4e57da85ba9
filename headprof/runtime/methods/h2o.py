import torch

from headprof.runtime.methods.base import Method, register
from headprof.runtime.selection import accumulated_scores


@register
class H2O(Method):
    """Zhang et al. 2023: heavy hitters (attention summed over all prompt queries) plus the recent window."""

    name = "h2o"

    def scores(self, query: torch.Tensor, keys: torch.Tensor, scaling: float, layer) -> torch.Tensor:
        return accumulated_scores(query, keys, scaling, self.options.h2o_block)
