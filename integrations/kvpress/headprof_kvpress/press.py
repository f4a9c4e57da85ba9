"""`HeadprofBudgetPress`: a headprof allocation's per-KV-head budgets applied inside kvpress.

headprof turns head scores into budgets (`headprof allocate --gqa kv` writes `budgets` `[layers, KV heads]`,
entries kept per head, the observation window included). kvpress scores prompt positions with any
`ScorerPress` (SnapKV, ExpectedAttention, ...); this press keeps each head's `budget` best positions by that
score (the last `window` positions always) and masks the rest the way kvpress's own head-wise press (AdaKV)
does: through `module.masked_key_indices`, which kvpress's attention patch applies. So a headprof allocation
runs in kvpress's pipeline and evaluation harness next to every kvpress method.

The allocation is read with safetensors alone (no headprof import: kvpress pins transformers < 5.3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from kvpress.presses.base_press import BasePress
from kvpress.presses.scorer_press import ScorerPress
from safetensors import safe_open

ALLOC_FORMAT = "headprof.alloc/1"


@dataclass(frozen=True)
class Allocation:
    """What the press needs from an allocation artifact: budgets `[L, Hkv]`, the window, the model it is for."""

    budgets: torch.Tensor
    window: int
    model_id: str


def read_allocation(path: str | Path) -> Allocation:
    """Read a headprof allocation (`headprof allocate --gqa kv`); anything else is refused with a reason."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"allocation {path} not found (a regular file written by `headprof allocate`)")
    with safe_open(str(path), "pt") as fh:
        meta = json.loads((fh.metadata() or {}).get("headprof", "{}"))
        if meta.get("format") != ALLOC_FORMAT or "budgets" not in fh.keys():
            raise ValueError(f"{path} is not a headprof allocation ({ALLOC_FORMAT})")
        budgets = fh.get_tensor("budgets").long()
    if meta.get("gqa", "query") != "kv":
        raise ValueError(
            f"{path} holds per-query-head budgets; kvpress keeps entries per KV head: allocate with --gqa kv"
        )
    window = int(meta.get("window", 0))
    if budgets.ndim != 2 or bool((budgets < 0).any()):
        raise ValueError(f"{path}: budgets must be a [layers, KV heads] table of non-negative counts")
    return Allocation(budgets, window, str(meta.get("model", {}).get("model_id", "")))


@dataclass
class HeadprofBudgetPress(BasePress):
    """Keep `budgets[layer, head]` entries of each KV head, ranked by `press`'s scores (window always kept).

    A layer whose row is 0 (a sliding-window layer headprof does not budget) is left as it is. A head whose
    budget covers the prompt keeps it whole.
    """

    press: ScorerPress
    budgets: torch.Tensor
    window: int = 0

    @classmethod
    def from_allocation(cls, path: str | Path, press: ScorerPress) -> HeadprofBudgetPress:
        allocation = read_allocation(path)
        return cls(press, allocation.budgets, allocation.window)

    def __post_init__(self) -> None:
        if not isinstance(self.press, ScorerPress):
            raise TypeError("HeadprofBudgetPress ranks positions with a ScorerPress (SnapKVPress, KnormPress, ...)")

    def post_init_from_model(self, model) -> None:  # noqa: ANN001 - a transformers model
        self.press.post_init_from_model(model)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        if tuple(self.budgets.shape) != (config.num_hidden_layers, heads):
            raise ValueError(
                f"the allocation's budgets are {tuple(self.budgets.shape)}, but the model has "
                f"{config.num_hidden_layers} layers x {heads} KV heads: it was made for another model"
            )

    @property
    def compression_ratio(self) -> float:
        """Not a setting here: each head's budget comes from the allocation (the ratio follows the prompt)."""
        return 0.0

    @compression_ratio.setter
    def compression_ratio(self, value: float) -> None:
        raise AttributeError("HeadprofBudgetPress takes its budgets from the allocation, not a compression_ratio")

    def compress(self, module, hidden_states, keys, values, attentions, kwargs):  # noqa: ANN001, ANN201
        budgets = self.budgets[module.layer_idx].to(keys.device)
        k_len = keys.shape[2]
        if not bool(budgets.any()) or bool((budgets >= k_len).all()):
            return keys, values
        scores = self.press.score(module, hidden_states, keys, values, attentions, kwargs)  # [B, H, T]
        if self.window:
            scores[..., -self.window :] = torch.finfo(scores.dtype).max
        order = scores.argsort(dim=-1, descending=True, stable=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(-1, order, torch.arange(k_len, device=order.device).expand_as(order))
        pruned = ranks >= budgets.clamp(max=k_len)[None, :, None]
        batch, head, position = pruned.nonzero(as_tuple=True)
        module.masked_key_indices = (batch, head, position)  # applied by kvpress's attention patch
        return keys, values
