"""The method interface: a score per prompt position and head, a selection rule, a default budget policy.

Adding a method = one file with one small class decorated with `@register`, imported in
`methods/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from headprof.errors import HeadprofError
from headprof.runtime.selection import Selection, top_k_with_window

if TYPE_CHECKING:
    from headprof.runtime.cache import CompressedLayer


@dataclass(frozen=True)
class MethodOptions:
    kernel: int = 7
    pooling: str = "max"
    sinks: int = 4
    h2o_block: int = 256
    adakv_floor: float = 0.2

    def __post_init__(self) -> None:
        # an even kernel would shift the pooled scores by half a position
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise HeadprofError(f"pooling kernel must be an odd number >= 1, got {self.kernel}")
        if self.pooling not in ("max", "avg"):
            raise HeadprofError(f"unknown pooling '{self.pooling}' (max, avg)")
        if not 0.0 <= self.adakv_floor <= 1.0:
            raise HeadprofError(f"adakv floor must lie in [0, 1], got {self.adakv_floor}")


class Method:
    name: ClassVar[str]
    policy: ClassVar[str] = "uniform"      # budgets when no allocation artifact is given
    group_reduce: ClassVar[str] = "mean"   # how the g query heads of a KV group share one selection
    deferred: ClassVar[bool] = False       # True: scores come from a reconstruction pass after the prompt
    compresses: ClassVar[bool] = True

    def __init__(self, options: MethodOptions):
        self.options = options

    def scores(self, query: torch.Tensor, keys: torch.Tensor, scaling: float,
               layer: CompressedLayer) -> torch.Tensor:
        """Importance `[B, Hq, T]` of each prompt position for each query head (higher = keep)."""
        raise NotImplementedError

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        return top_k_with_window(scores, budgets, window)

    def accumulate_reconstruction(self, layer: CompressedLayer, query: torch.Tensor, scaling: float) -> None:
        raise NotImplementedError(f"{self.name} has no reconstruction pass")


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls
