"""The method interface, after kvpress's presses: a method is a small class with an options dataclass
and hooks; the press and the cache call the hooks and own everything else.

Hooks (all pure: tensors in, tensors out, no state kept between calls):
- `score(query, keys, scaling, window)`: importance of each prompt position for each query head;
- `select(scores, budgets, window)`: which entries each stored head keeps (default: the window plus
  the top `b_i - w`, see `selection.top_k_with_window`);
- `extra_pass(prompt_ids, tokenizer)`: tokens of an extra forward pass over the prompt's cache
  whose queries `score` reads instead of the prompt's own (KVzip's reconstruction); None by default.

Adding a method = one file in `runtime/methods/` with one `Method` subclass, and one line in the
registry (`methods/__init__.py`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from headprof.runtime.selection import Selection, top_k_with_window

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


class Method:
    """A KV-compression method: its options, budget policy, and the scoring and selection hooks."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    policy: ClassVar[str] = "uniform"  # budgets when no allocation artifact is given
    group_reduce: ClassVar[str] = "mean"  # how the g query heads of a KV group share one selection
    compresses: ClassVar[bool] = True  # False: the full cache (transformers' own DynamicCache)
    query_agnostic: ClassVar[bool] = False  # True: compresses the context alone, before any question

    def __init__(self, options: Any = None):
        self.options = self.Options() if options is None else options

    def score(self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int) -> torch.Tensor:
        """Importance `[B, Hq, T]` of each prompt position for each query head (higher = keep).

        `query` `[B, Hq, n, d]` are the last n positions of `keys` `[B, Hkv, T, d]`: the whole prompt,
        or (with an extra pass) the pass's tokens after the prompt, whose positions are then not scored.
        """
        raise NotImplementedError(f"{self.name} does not score prompt positions")

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        """Kept positions per stored head from `[B, S, T]` scores and `[S]` budgets (window included)."""
        return top_k_with_window(scores, budgets, window)

    def extra_pass(
        self, prompt_ids: torch.Tensor | None, tokenizer: PreTrainedTokenizerBase | None
    ) -> torch.Tensor | None:
        """Token ids `[B, n]` of a forward pass run right after the prompt, on its cache, to score it; None: no pass."""
        return None
