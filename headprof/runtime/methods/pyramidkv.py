from headprof.runtime.methods.base import register
from headprof.runtime.methods.snapkv import SnapKV


@register
class PyramidKV(SnapKV):
    """Cai et al. 2024: SnapKV selection, budgets falling linearly from the bottom layer to the top (beta 20)."""

    name = "pyramidkv"
    policy = "pyramid"
