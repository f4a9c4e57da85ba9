"""HeadKV (Fu et al. 2025): SnapKV selection under per-head budgets from head scores."""

from headprof.runtime.methods.snapkv import SnapKV


class HeadKV(SnapKV):
    """Fu et al. 2025: SnapKV selection with per-head budgets from head scores (an allocation artifact)."""

    name = "headkv"
    policy = "headkv"
