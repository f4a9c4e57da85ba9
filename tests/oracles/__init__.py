"""Test oracles: each reference's selection rule rewritten from its code, one module per reference repository.

They are written for the tests (pure torch, small tensors, no headprof import) so that the runtime can be
checked against them on identical Q/K. Every function cites the file and commit it follows. Kept sets are
returned as boolean masks `[B, S, T]` (S = stored heads: KV heads or query heads by layout).
"""

from __future__ import annotations

import torch


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b| of two boolean keep-masks (1.0 when both are empty)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def mask_from_indices(indices: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Boolean mask of `shape` with True at `indices` along the last dim (indices `[..., k]`)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    return mask.scatter(-1, indices, True)


def register_recorder(name: str, seen: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Register attention implementation `name`: SDPA (with SDPA's causal mask builder) that also records each
    layer's post-RoPE query and keys (after the cache update) in `seen[layer_idx]`."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def record(module, query, key, value, attention_mask, **kwargs):
        seen[module.layer_idx] = (query.detach(), key.detach())
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS.register(name, record)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
