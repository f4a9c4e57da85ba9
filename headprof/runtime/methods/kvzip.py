import torch

from headprof.attention import attention_rows
from headprof.runtime.methods.base import Method, register


@register
class KVzip(Method):
    """Kim et al. 2025: query-agnostic. After the context, a reconstruction pass (the context fed again)
    scores each KV entry by the most attention any reconstruction query gives it; one compressed cache
    then serves any question about the context."""

    name = "kvzip"
    deferred = True
    group_reduce = "max"

    def accumulate_reconstruction(self, layer, query: torch.Tensor, scaling: float) -> None:
        prefix, block = layer.prefix, self.options.h2o_block
        total = layer.keys.shape[2]
        first = total - query.shape[2]
        best = layer.reconstruction_scores
        for start in range(0, query.shape[2], block):
            stop = min(start + block, query.shape[2])
            rows = attention_rows(query[:, :, start:stop], layer.keys[:, :, : first + stop], scaling)
            top = rows[..., :prefix].amax(dim=2)
            best = top if best is None else torch.maximum(best, top)
        layer.reconstruction_scores = best
