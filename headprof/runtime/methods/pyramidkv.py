"""PyramidKV (Cai et al. 2024): SnapKV selection under pyramid-shaped layer budgets."""

from headprof.runtime.methods.snapkv import SnapKV


class PyramidKV(SnapKV):
    """Cai et al. 2024: SnapKV selection, budgets falling linearly from the bottom layer to the top (beta 20)."""

    name = "pyramidkv"
    policy = "pyramid"
