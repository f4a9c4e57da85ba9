"""Attention recomputed in plain PyTorch, in float32, the way the model's own eager attention defines it.

Shared by scoring (answer-step rows), the runtime's methods (SnapKV votes, H2O sums, KVzip reconstruction)
and the attention functions headprof registers with transformers (`exact_attention`, for the families
SDPA gets wrong: Gemma 2's logit soft-capping, GPT-OSS's attention sinks). Never the full T x T matrix:
rows are computed for the queries asked for, `exact_attention` a block of queries at a time.

The math, per query head h (query head h reads KV head h // g, transformers' `repeat_kv` grouping):
`logits = (q * scaling) k^T` accumulated in float32 (queries scaled before the matmul, as SDPA does), then
`softcap * tanh(logits / softcap)` when the model soft-caps, then the mask, then a softmax over the
visible positions whose denominator also holds `exp(sink_h)` when the model has attention sinks (the
sink has no value: rows then sum to less than 1, as in the eager code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from headprof.errors import HeadprofError


@dataclass(frozen=True)
class LogitExtras:
    """What a family adds to plain softmax attention: tanh soft-capping of the logits, one sink logit per query head."""

    softcap: float | None = None
    sinks: torch.Tensor | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> LogitExtras:
        """Read them from an attention call's keyword arguments (Gemma 2 passes `softcap`, GPT-OSS `s_aux`)."""
        return cls(kwargs.get("softcap") or None, kwargs.get("s_aux"))

    @property
    def plain(self) -> bool:
        """True when SDPA computes this attention exactly."""
        return self.softcap is None and self.sinks is None


PLAIN = LogitExtras()


def grouped_logits(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    softcap: float | None = None,
    *,
    model_dtype_logits: bool = False,
) -> torch.Tensor:
    """Scaled (and soft-capped) float32 logits `[B, Hq, n, T]` of queries `[B, Hq, n, d]`, keys `[B, Hkv, T, d]`.

    `model_dtype_logits`: the logits as every KV-compression reference computes its selection logits
    (KVCache-Factory, AdaKV, HeadKV, KVzip, H2O: `matmul(q, k^T) / math.sqrt(head_dim)`): the product and
    the division both in the inputs' dtype, so in bf16/fp16 the scaled logits are rounded to it before the
    float32 softmax. Dividing by `1 / scaling` is that division: float32(1 / d**-0.5) == float32(sqrt(d))
    for every d up to 1024, and torch divides a half-precision tensor by a Python scalar in float32.
    Scaling in float32 after the matmul instead changes which entries win in bf16 at head dim 128 (1 / sqrt(d)
    is no power of two there; at d = 64 both are exact). Default: queries scaled and the product
    accumulated in float32, as SDPA and the eager attention do.
    """
    batch, n_heads, n_rows, dim = query.shape
    n_kv, total = key.shape[1], key.shape[2]
    if model_dtype_logits:
        grouped = query.reshape(batch, n_kv, (n_heads // n_kv) * n_rows, dim)
        logits = torch.matmul(grouped, key.transpose(-1, -2)).div_(1.0 / scaling).float()
    else:
        grouped = (query.float() * scaling).reshape(batch, n_kv, (n_heads // n_kv) * n_rows, dim)
        logits = torch.matmul(grouped, key.float().transpose(-1, -2))
    return capped(logits.view(batch, n_heads, n_rows, total), softcap)


def grouped_values(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention output `[B, Hq, n, dv]` of softmax rows `[B, Hq, n, T]` over values `[B, Hkv, T, dv]` (each KV
    head's values read by the query heads of its group, not repeated)."""
    batch, n_heads, n_rows, total = probs.shape
    grouped = probs.reshape(batch, values.shape[1], -1, total)
    return torch.matmul(grouped, values).view(batch, n_heads, n_rows, -1)


def capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma 2's soft-capping, applied after scaling and before the mask (as its eager attention does)."""
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def visible(mask: torch.Tensor | None, n_rows: int, total: int, device: torch.device) -> torch.Tensor:
    """Which of `total` positions the last `n_rows` queries see: a transformers mask (4D bool, True = attend, or
    additive float holding only 0 and the dtype's minimum) sliced to those rows, or, for None, causal attention
    aligned bottom-right.

    A float mask with any other value carries a bias (ALiBi's): read as visibility it would silently drop every
    biased position, so it is refused. Families reach this check only when their config did not say so
    (`models.spec.check_supported` refuses ALiBi configs before any forward).
    """
    if mask is None:
        query_pos = torch.arange(total - n_rows, total, device=device)
        return torch.arange(total, device=device)[None, :] <= query_pos[:, None]
    mask = mask[..., -n_rows:, -total:]
    if mask.dtype == torch.bool:
        return mask
    seen = mask == 0
    if not bool((seen | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
        raise HeadprofError("the attention mask carries a position bias (as ALiBi does): headprof does not support it")
    return seen


def softmax_with_sinks(logits: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last dim of `[B, Hq, n, T]`; with sinks, `exp(sink_h)` joins each row's denominator."""
    if sinks is None:
        return logits.softmax(dim=-1)
    sink = sinks.float().reshape(1, -1, 1, 1).expand(logits.shape[0], -1, logits.shape[2], 1)
    return torch.cat([logits, sink], dim=-1).softmax(dim=-1)[..., :-1]


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    *,
    mask: torch.Tensor | None = None,
    extras: LogitExtras = PLAIN,
    model_dtype_logits: bool = False,
) -> torch.Tensor:
    """Softmax rows of the last queries over all keys, in float32.

    query `[B, Hq, n, d]` (the last n query positions), key `[B, Hkv, T, d]`; returns `[B, Hq, n, T]`.
    `mask`: the mask transformers handed the attention call (its last n rows are used; None = causal), so
    sliding-window and chunked layers give rows that are zero outside their window. `model_dtype_logits`:
    see `grouped_logits` (capture leaves it off; the runtime's selection turns it on).
    """
    logits = grouped_logits(query, key, scaling, extras.softcap, model_dtype_logits=model_dtype_logits)
    seen = visible(mask, query.shape[2], key.shape[2], key.device)
    return softmax_with_sinks(logits.masked_fill_(seen.logical_not(), float("-inf")), extras.sinks)


def exact_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    *,
    mask: torch.Tensor | None = None,
    extras: LogitExtras = PLAIN,
    block: int = 512,
) -> torch.Tensor:
    """The attention output `[B, n, Hq, dv]` (transformers' layout) in float32 math, `block` queries at a time.

    For the calls SDPA can't compute (soft-capping, sinks); peak extra memory `[B, Hq, block, T]`.
    """
    n_rows, total = query.shape[2], key.shape[2]
    seen = visible(mask, n_rows, total, key.device)
    values = value.float()
    out = []
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        logits = grouped_logits(query[:, :, start:stop], key, scaling, extras.softcap)
        probs = softmax_with_sinks(logits.masked_fill(~seen[..., start:stop, :], float("-inf")), extras.sinks)
        out.append(grouped_values(probs, values))
    return torch.cat(out, dim=2).transpose(1, 2).to(query.dtype)
