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
from headprof.errors import HeadprofError
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


@dataclass
class _Ablation:
    """What the ablating attention does: replace masked heads' output (`values`: `[L, H, d]`, None = zero),
    and/or add every head's output summed over positions to `sums` (`[L, H, d]`, float64) for means."""

    mask: torch.Tensor | None = None
    values: torch.Tensor | None = None
    sums: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # [L] positions summed per layer


_ABLATION: contextvars.ContextVar[_Ablation | None] = contextvars.ContextVar("headprof_ablation", default=None)


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
    state, layer = _ABLATION.get(), module.layer_idx
    if state is None:
        return output, None
    if state.sums is not None:  # output [B, q, H, d]: the per-head vectors o_proj reads
        state.sums[layer] += output.detach().double().sum(dim=(0, 1)).cpu()
        state.positions[layer] += output.shape[0] * output.shape[1]
    if state.mask is not None and bool(state.mask[layer].any()):
        masked = state.mask[layer].to(output.device)[None, None, :, None]
        fill = 0.0 if state.values is None else state.values[layer].to(output.device, output.dtype)[None, None]
        output = torch.where(masked, fill, output)
    return output, None


register_attention(ABLATE_IMPL, _ablating_attention)


@contextlib.contextmanager
def _ablating(model: PreTrainedModel, state: _Ablation) -> Iterator[_Ablation]:
    with attention_switched(model, ABLATE_IMPL):
        token = _ABLATION.set(state)
        try:
            yield state
        finally:
            _ABLATION.reset(token)


def masked_heads(model: PreTrainedModel, mask: torch.Tensor, values: torch.Tensor | None = None) -> Any:
    """For a `with` block, replace the attention output of the heads where `mask[layer, head]` is True:
    by `values[layer, head]` (`[L, H, d]`, e.g. `HeadMeans.means()`: mean ablation), or by zero."""
    return _ablating(model, _Ablation(mask=mask.bool(), values=values))


class HeadMeans:
    """Every head's attention output (the vector o_proj reads) averaged over all positions of the forwards run
    inside `with HeadMeans(model) as means:`; `means.means()` is `[L, H, d]`."""

    def __init__(self, model: PreTrainedModel):
        text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        n_heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
        self.model = model
        self.state = _Ablation(
            sums=torch.zeros(text.num_hidden_layers, n_heads, head_dim, dtype=torch.float64),
            positions=torch.zeros(text.num_hidden_layers, dtype=torch.float64),
        )
        self._context: Any = None

    def __enter__(self) -> HeadMeans:
        self._context = _ablating(self.model, self.state)
        self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)

    def means(self) -> torch.Tensor:
        """`[L, H, d]` float32 means; an error if nothing was recorded."""
        if not bool((self.state.positions > 0).all()):
            raise HeadprofError("no forward pass was recorded for the head means")
        return (self.state.sums / self.state.positions[:, None, None]).float()
