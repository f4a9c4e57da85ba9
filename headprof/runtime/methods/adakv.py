import torch

from headprof.runtime.methods.base import register
from headprof.runtime.methods.snapkv import SnapKV
from headprof.runtime.selection import Selection, pooled_top_k


@register
class AdaKV(SnapKV):
    """Feng et al. 2024: a layer's heads pool their budgets and keep the layer-wide top SnapKV scores,
    each head guaranteed a floor share (default 0.2) of its own budget."""

    name = "adakv"

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        return pooled_top_k(scores, budgets, window, self.options.adakv_floor)
