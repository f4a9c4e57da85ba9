"""Attention capture for scoring: only the rows of the answer steps, never the full T x T matrix.

A registered attention function (transformers' AttentionInterface) runs the normal SDPA forward
and, when a capture is active, recomputes softmax(q k^T) for the last `n_rows` queries of the call
only. Those rows cost O(n_rows x T) per head, so a teacher-forced probe costs about one SDPA forward
and memory grows linearly with context. Each layer's rows are handed to a callback and dropped.

Rows are the model's own attention probabilities: they take the mask transformers built (zero outside a
sliding window or chunk), Gemma 2's soft-capping and GPT-OSS's sinks (rows then sum to less than 1, as
the eager attention's do). Families SDPA gets wrong (soft-capping, sinks) run `exact_attention` instead.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from headprof.attention import attention_rows
from headprof.models.registry import (
    attention_switched,
    model_attention,
    model_name,
    pop_logit_options,
    register_attention,
    switch_attention,
)
from headprof.models.spec import check_supported

if TYPE_CHECKING:
    from transformers import PreTrainedModel

CAPTURE_IMPL = "headprof_capture"
RowsCallback = Callable[[int, torch.Tensor], None]


@dataclass(frozen=True)
class _Request:
    n_rows: int
    on_rows: RowsCallback


_ACTIVE: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("headprof_capture", default=None)


def _capture_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    scaling, extras = pop_logit_options(query, kwargs)
    output = model_attention(module, query, key, value, attention_mask, scaling, extras, **kwargs)
    request = _ACTIVE.get()
    if request is not None:
        n_rows = min(request.n_rows, query.shape[2])
        rows = attention_rows(query[:, :, -n_rows:], key, scaling, mask=attention_mask, extras=extras)
        request.on_rows(module.layer_idx, rows)
    return output, None


register_attention(CAPTURE_IMPL, _capture_attention)


class AttentionCapture:
    """Switch a model to the capturing attention for a `with` block; `rows()` arms one forward."""

    def __init__(self, model: PreTrainedModel):
        check_supported(model.config, model_name(model))
        self.model = model
        self._previous: str | None = None

    def __enter__(self) -> AttentionCapture:
        self._previous = switch_attention(self.model, CAPTURE_IMPL)
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.set_attn_implementation(self._previous or "sdpa")

    @staticmethod
    @contextlib.contextmanager
    def rows(n_rows: int, on_rows: RowsCallback) -> Iterator[None]:
        """Hand the last `n_rows` attention rows of every attention call to `on_rows(layer_idx, rows)`."""
        token = _ACTIVE.set(_Request(n_rows, on_rows))
        try:
            yield
        finally:
            _ACTIVE.reset(token)


# ---------------------------------------------------------------- head ablation

ABLATE_IMPL = "headprof_ablate"
_MASK: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("headprof_head_mask", default=None)


def _ablating_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    scaling, extras = pop_logit_options(query, kwargs)
    output = model_attention(module, query, key, value, attention_mask, scaling, extras, **kwargs)
    mask = _MASK.get()
    if mask is not None and bool(mask[module.layer_idx].any()):
        keep = (~mask[module.layer_idx]).to(output.dtype).to(output.device)
        output = output * keep[None, None, :, None]  # [B, q, H, d]: the head contributes nothing to o_proj
    return output, None


register_attention(ABLATE_IMPL, _ablating_attention)


@contextlib.contextmanager
def masked_heads(model: PreTrainedModel, mask: torch.Tensor) -> Iterator[None]:
    """Zero the attention output of the heads where `mask[layer, head]` is True, for a `with` block."""
    with attention_switched(model, ABLATE_IMPL):
        token = _MASK.set(mask.bool())
        try:
            yield
        finally:
            _MASK.reset(token)
