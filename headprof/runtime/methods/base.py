"""The method interface, after kvpress's presses: a method is a small class with an options dataclass
and hooks; the press and the cache call the hooks and own everything else.

Hooks (pure: tensors in, tensors out, no state kept between calls; the press and the cache keep the state),
all but `evict`, the one hook that updates a layer in place:
- `budgets_for(plan, prompt_tokens)`: the budgets one prompt uses (the references' "no compression when the
  budget covers the prompt", PyramidKV's schedule that depends on the prompt length);
- `score(query, keys, scaling, window, n_stored)`: importance of each prompt position for each stored head;
- `select(scores, budgets, window)`: which entries each stored head of a layer keeps (default: the window
  plus `topk(b_i - w)`, see `selection.top_k_with_window`);
- `extra_passes(prompt_ids, tokenizer)`: forward passes the press runs on the prompt's dense cache after
  the prompt (KVzip's chunked reconstruction), each described by an `ExtraPass`; their queries score the
  prompt through `score_pass`, and `select_layers` then selects over all layers at once (default: `select`
  layer by layer); None (the default): the layer compresses from its own prompt queries, right away;
- `evict(layer, query, scaling)`: called after every attention over a compressed layer when `evicts` is
  True (H2O's decode-time eviction); the one stateful hook: it replaces the layer's stored entries through
  `CompressedLayer.store` and returns nothing.

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

    from headprof.runtime.plan import BudgetPlan


SCALES = ("model", "head-dim")


def logit_scale(scale: str, scaling: float, head_dim: int) -> float:
    """The factor a method's selection logits use: the model's own `scaling` (`scale="model"`, the attention the
    model computes) or `1 / sqrt(head_dim)` (`"head-dim"`, what every reference's code writes, `math.sqrt` of the
    query's last dim). They differ only where a model scales otherwise: Gemma 2/3 (`query_pre_attn_scalar`,
    e.g. 144 at Gemma-2-27B's head dim 128, 168 at Gemma-3-27B's), Granite (`attention_multiplier`), the
    MLA models' mscale."""
    return head_dim**-0.5 if scale == "head-dim" else scaling


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


@dataclasses.dataclass(frozen=True)
class ExtraPass:
    """One forward pass the press runs right after the prompt, on the prompt's dense cache.

    Its tokens `ids` `[B, n]` take positions from the prompt length N on (the cache is cut back to the
    prompt after every pass, so every pass starts at N); its queries score prompt positions `start:end`.
    Prompt positions that no pass scores are always kept.
    """

    ids: torch.Tensor
    start: int
    end: int


class Method:
    """A KV-compression method: its options, budget policy, and the scoring and selection hooks."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    policy: ClassVar[str] = "uniform"  # budgets when no allocation artifact is given
    compresses: ClassVar[bool] = True  # False: the full cache (transformers' own DynamicCache)
    query_agnostic: ClassVar[bool] = False  # True: compresses the context alone, before any question
    needs_tokenizer: ClassVar[bool] = False  # True: its extra passes are text (a press refuses to build without one)
    needs_scores: ClassVar[bool] = False  # True: its own policy allocates from head scores (a score artifact)

    def __init__(self, options: Any = None):
        self.options = self.Options() if options is None else options

    @property
    def score_key(self) -> object:
        """What `score` depends on besides its inputs: methods with equal keys score a prompt alike, so a sweep
        computes their scores once (default: the method's class and all its options)."""
        return type(self), self.options

    @property
    def evicts(self) -> bool:
        """Whether `evict` runs after every attention over a compressed layer (decode-time eviction)."""
        return False

    def budgets_for(self, plan: BudgetPlan, prompt_tokens: int) -> torch.Tensor:
        """Budgets `[L, S]` for a prompt of `prompt_tokens` tokens.

        Every reference leaves the cache whole when the prompt is shorter than the nominal budget B
        (`T < B`; KVCache-Factory, AdaKV and HeadKV alike), even where some heads' budgets are below T:
        every head then gets B, which no selection rule can fill.
        """
        if prompt_tokens < plan.budget:
            return torch.full_like(plan.budgets, plan.budget)
        return plan.budgets

    def score(
        self, query: torch.Tensor, keys: torch.Tensor, scaling: float, window: int, n_stored: int
    ) -> torch.Tensor:
        """Importance `[B, S, T]` of each prompt position for each of the layer's S stored heads (higher = keep).

        `query` `[B, Hq, T, d]` are the prompt's queries, `keys` `[B, Hkv, T, d]` its keys; S is Hkv (one
        selection per KV group) or Hq (per query head).
        """
        raise NotImplementedError(f"{self.name} does not score prompt positions")

    def select(self, scores: torch.Tensor, budgets: torch.Tensor, window: int) -> Selection:
        """Kept positions per stored head from `[B, S, T]` scores and `[S]` budgets (window included)."""
        return top_k_with_window(scores, budgets, window)

    def select_layers(self, scores: list[torch.Tensor], budgets: torch.Tensor, window: int) -> list[Selection]:
        """Selections of every layer at once (after extra passes): `scores[l]` `[B, S, T]`, budgets `[L, S]`."""
        return [self.select(layer_scores, row, window) for layer_scores, row in zip(scores, budgets)]

    def extra_passes(
        self, prompt_ids: torch.Tensor | None, tokenizer: PreTrainedTokenizerBase | None
    ) -> list[ExtraPass] | None:
        """The passes that score the prompt `[B, N]` instead of its own queries; None: no extra pass."""
        return None

    def score_pass(
        self, extra: ExtraPass, query: torch.Tensor, keys: torch.Tensor, scaling: float, n_stored: int
    ) -> torch.Tensor:
        """Scores `[B, S, extra.end - extra.start]` from one pass: `query` `[B, Hq, n, d]` of its n tokens,
        `keys` `[B, Hkv, N + n, d]` (the prompt's, then the pass's own)."""
        raise NotImplementedError(f"{self.name} has no extra pass")

    def pass_attention(
        self,
        extra: ExtraPass,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor | None,
        scaling: float,
        n_stored: int,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`score_pass`'s scores and, where the method computed the pass's attention output on the way
        (`[B, n, Hq, d]`: the softmax it scores from is the model's own), that output, so that the layer does
        not compute the attention a second time. `values` None: no output wanted. Default: no output."""
        return self.score_pass(extra, query, keys, scaling, n_stored), None

    def evict(self, layer: Any, query: torch.Tensor, scaling: float) -> None:
        """Update a compressed layer (a `cache.CompressedLayer`; typed loosely so that the method interface does
        not import the cache built on it) in place after its attention, only called when `evicts` is True: the one
        hook with a side effect, it hands the layer its new entries through `store`."""
