"""Decode attention over a compressed layer: each query head reads only its own stored head's kept entries.

One attention call per run of equally long rows, the queries a row serves (those of its KV group, at every
position of the step) as rows of one head, so work and memory traffic follow the kept entries: SDPA itself,
on CPU and CUDA, with its own fused kernels and float32 accumulation and no copy of the cache. Where the
tokens after the prompt are stored apart (the query layout), the two parts are merged exactly through their
log-sum-exps, as split-K decoding kernels merge their splits: in float32 on the CPU each part is PyTorch's
fused flash op (SDPA's own CPU kernel, which returns the log-sum-exp too); otherwise float32 math on the part
(a low-precision part is cast to float32 for its call: the flash op would round each part's output to bf16
before the merge). Soft-capping takes the float32 math; attention sinks join the denominator.
"""

from __future__ import annotations

import torch

from headprof.attention import LogitExtras, capped
from headprof.runtime.storage import KeptEntries, concat

# PyTorch's fused CPU flash-attention op: SDPA's own CPU kernel, which also returns the log-sum-exp of each row.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def attend_kept(layer: KeptEntries, query: torch.Tensor, scaling: float, extras: LogitExtras) -> torch.Tensor:
    """Attention output `[B, q, Hq, d]` of a compressed layer's queries over its kept entries and the tokens
    after the prompt: each stored row read by the queries it serves, one SDPA call per run."""
    batch, n_heads, q_len, dim = query.shape
    # stored row r's queries (the query heads it serves, each of the q positions) as rows of one head
    rows = layer.in_sorted_order(query.reshape(1, len(layer.lengths), -1, dim), 1)
    per = rows.shape[2] // q_len
    if not layer.recent_apart:  # each row holds its whole cache: one call per run, nothing to merge
        parts = []
        for run in layer.runs:
            size = run.length + layer.n_recent
            inputs = rows[:, run.first : run.end], run.keys[None, :, :size], run.values[None, :, :size], scaling
            visible = _causal_tail(q_len, size, per, query.device)
            if extras.plain:
                parts.append((_sdpa(*inputs, visible), None))
            else:
                parts.append(_attention_with_lse(*inputs, visible, extras))
        output = layer.in_row_order(concat([part[0] for part in parts], dim=1), 1)
        output = output.reshape(batch, n_heads, q_len, -1)
        if extras.sinks is not None:  # exp(sink) joins the denominator
            lse = layer.in_row_order(concat([part[1] for part in parts], dim=1), 1)
            lse = lse.reshape(batch, n_heads, q_len)
            output = output * torch.sigmoid(lse - extras.sinks.float().view(1, -1, 1))[..., None]
        return output.to(query.dtype).transpose(1, 2)
    # query layout: kept entries per query head, the recent part once per KV head; merged by log-sum-exp
    kept = [
        _attention_with_lse(rows[:, run.first : run.end], run.keys[None], run.values[None], scaling, None, extras)
        if run.length
        else _nothing(rows[:, run.first : run.end])
        for run in layer.runs
    ]
    kept_out = layer.in_row_order(concat([part[0] for part in kept], dim=1), 1)
    kept_out = kept_out.reshape(batch, n_heads, q_len, -1)
    kept_lse = layer.in_row_order(concat([part[1] for part in kept], dim=1), 1).reshape(batch, n_heads, q_len)
    group_rows = query.reshape(batch, layer.n_kv, -1, dim)
    visible = _causal_tail(q_len, layer.n_recent, group_rows.shape[2] // q_len, query.device)
    recent_out, recent_lse = _attention_with_lse(
        group_rows, layer.recent_keys, layer.recent_values, scaling, visible, extras
    )
    recent_out = recent_out.reshape(batch, n_heads, q_len, -1)
    recent_lse = recent_lse.reshape(batch, n_heads, q_len)
    # each part's output weighted by its share of the softmax mass, in float32
    output = torch.lerp(recent_out, kept_out, torch.sigmoid(kept_lse - recent_lse)[..., None])
    if extras.sinks is not None:
        total = torch.logaddexp(kept_lse, recent_lse)
        output = output * torch.sigmoid(total - extras.sinks.float().view(1, -1, 1))[..., None]
    return output.to(query.dtype).transpose(1, 2)


def _causal_tail(q_len: int, size: int, repeats: int, device: torch.device) -> torch.Tensor | None:
    """Which of `size` entries each query row sees when the last `q_len` entries are the queries' own tokens:
    `[repeats * q_len, size]` (rows ordered head, then position), or None for one query (it sees all)."""
    if q_len == 1:
        return None
    limit = torch.arange(q_len, device=device)[:, None] + (size - q_len)
    return (torch.arange(size, device=device)[None, :] <= limit).repeat(repeats, 1)


def _sdpa(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float, visible: torch.Tensor | None
) -> torch.Tensor:
    """PyTorch's SDPA: its fused kernels on CPU and CUDA, float32 accumulation whatever the dtype, no copies."""
    return torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=visible, scale=scaling)


def _nothing(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The part of a row that keeps no entry: no output, no mass (log-sum-exp -inf)."""
    return torch.zeros_like(rows, dtype=torch.float), torch.full(rows.shape[:-1], float("-inf"), device=rows.device)


def _attention_with_lse(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scaling: float,
    visible: torch.Tensor | None,
    extras: LogitExtras,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of queries `[B, H, n, d]` over keys and values `[B, H, m, d]` (each head its own) in float32,
    with the log-sum-exp `[B, H, n]` of each row's logits, so that parts of one softmax can be merged.

    `visible`: `[n, m]` or None (all). In float32 on the CPU without soft-capping: the fused flash op SDPA runs,
    which returns the log-sum-exp too. Otherwise float32 math, as SDPA's math path computes it: queries scaled
    before the matmul, capped logits, exact softmax. (The flash op rounds a bf16 or fp16 output before the
    merge, a second rounding that measured 1.2x SDPA's mean error: low precision takes the float32 math.)"""
    fused = query.dtype == torch.float32 and query.device.type == "cpu" and extras.softcap is None
    if fused and _FLASH_CPU is not None and keys.shape[-1] == values.shape[-1]:
        mask = None if visible is None else torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))
        return _FLASH_CPU(query, keys, values, attn_mask=mask, scale=scaling)
    logits = capped((query.float() * scaling) @ keys.float().transpose(-1, -2), extras.softcap)
    if visible is not None:
        logits = logits.masked_fill(~visible, float("-inf"))
    lse = logits.logsumexp(dim=-1)
    return (logits - lse[..., None]).exp() @ values.float(), lse
