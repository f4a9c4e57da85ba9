from headprof.runtime.methods.base import register
from headprof.runtime.methods.snapkv import SnapKV


@register
class HeadKV(SnapKV):
    """Fu et al. 2025: SnapKV selection with per-head budgets from head scores (an allocation artifact)."""

    name = "headkv"
    policy = "headkv"
