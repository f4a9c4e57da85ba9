"""headprof's attention functions in transformers' registries, switching a model to one of them, and the
attention output the model's own implementation would give.

Two pitfalls of transformers 5.x make this its own module (see docs/ARCHITECTURE.md, "A model family"):
- an attention name must be registered with a mask function too, or the model builds no mask at all for
  it: sliding windows and padding are then silently lost. headprof's functions take the SDPA mask builder
  (4D bool masks, None where plain causal attention is meant);
- `set_attn_implementation` only warns, and changes nothing, on a family whose attention does not go
  through the registry (Falcon, BLOOM, GPT-Neo): the switch is checked and refused in one line.
Names must not contain "sdpa", "flash", "flex_attention" or "/", which transformers reads as requests for
its own kernels or for hub kernels.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from headprof.attention import PLAIN, LogitExtras, exact_attention, visible
from headprof.errors import HeadprofError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

_RESERVED = re.compile(r"sdpa|flash|flex_attention|/")


def register_attention(name: str, function: Callable[..., Any]) -> None:
    """Register `function` under `name` with the SDPA mask builder (sliding windows and padding reach it as masks)."""
    if _RESERVED.search(name):
        raise ValueError(f"attention name '{name}' would be read by transformers as one of its own kernels")
    AttentionInterface.register(name, function)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def model_name(model: PreTrainedModel) -> str:
    """What error lines call a model: its path or hub id, else its class."""
    return getattr(model, "name_or_path", "") or type(model).__name__


def switch_attention(model: PreTrainedModel, name: str) -> str:
    """Make `model` run the registered attention `name`; returns the previous implementation.

    Refused when the family ignores the switch: its attention would silently run without headprof.
    """
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:
        model.set_attn_implementation(previous)
        raise HeadprofError(
            f"model '{model_name(model)}' ({model.config.model_type}) does not route its attention through "
            "transformers' attention-function registry: headprof cannot capture or compress it"
        )
    return previous


@contextlib.contextmanager
def attention_switched(model: PreTrainedModel, name: str) -> Iterator[None]:
    """`switch_attention` for a `with` block, restoring the previous implementation after it."""
    previous = switch_attention(model, name)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def pop_logit_options(query: torch.Tensor, kwargs: dict[str, Any]) -> tuple[float, LogitExtras]:
    """Take the scaling (default `d ** -0.5`) and the soft-cap and sinks out of an attention call's kwargs."""
    extras = LogitExtras.from_kwargs(kwargs)
    kwargs.pop("softcap", None)
    kwargs.pop("s_aux", None)
    return kwargs.pop("scaling", None) or query.shape[-1] ** -0.5, extras


def model_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    extras: LogitExtras = PLAIN,
    **kwargs: Any,
) -> torch.Tensor:
    """The attention output `[B, n, Hq, dv]` the model's own implementation gives: transformers' SDPA, or
    float32 math (`exact_attention`) where SDPA can't (soft-capping raises in it, sinks are silently dropped).

    A None mask means causal attention aligned bottom-right (the queries are the last of the keys).
    """
    if not extras.plain:
        return exact_attention(query, key, value, scaling, mask=mask, extras=extras)
    n_rows, total = query.shape[2], key.shape[2]
    if mask is None and 1 < n_rows != total:  # SDPA's is_causal aligns top-left
        mask = visible(None, n_rows, total, query.device)[None, None]
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, mask, scaling=scaling, **kwargs)[0]
