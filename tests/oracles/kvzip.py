"""KVzip (snu-mllab/KVzip @ 5d8472975d286e3da6b52178af39d18904330c0d): repeat inputs, scores and selection.

- `model/wrapper.py` `chunk_fn` (l.18) and `ModelKVzip.self_task` (l.197): the context (not the template
  prefix, not the question) is cut in chunks of 2000 tokens; chunk 0 is preceded by the first prompt, chunk
  i > 0 by the second prompt and the last 8 token ids of chunk i-1; then the assistant-turn opener, then the
  chunk. `scoring` (l.224) runs every chunk on the full prefill cache (`__call__` slices the cache back after
  each pass, so every pass starts at position N).
- `attention/score.py` `KVScore._get_score` (l.36): softmax over prefix + own chunk + the pass's own tokens
  (causal among them), columns of the chunk, max over the GQA group and the pass's queries.
- `model/template.py` `template`: the system prefix and the assistant-turn opener ("postfix") per family, by
  model name: Llama 3 (opener with a leading "\n\n"), Qwen (ChatML; Qwen3 adds an empty think block), Gemma 3,
  else the fallback "\n\nAnswer: ".
- Numerics (`KVScore._get_score`): `matmul(q, k^T) / math.sqrt(head_dim)` in the model dtype, softmax in the
  model dtype ("not fp32"), scores kept in it.
- `KVScore._threshold` (l.84, level "pair"): one threshold over all layers, heads and context positions,
  `n = max(int(numel * ratio) - 1, 0)`, strict `>` (ties with the threshold dropped);
  `_threshold_uniform` (l.101, "pair-uniform"): `topk(int(C * ratio))` per head.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

FIRST_PROMPT = "\n\nRepeat the previous context exactly."
NEXT_PROMPT = "\n\nRepeat the part of the previous context exactly, starting with "
OPENERS = {  # template.py's postfix strings
    "llama": "\n\n<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "qwen": "<|im_end|>\n<|im_start|>assistant\n",
    "qwen3": "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "gemma3": "<end_of_turn>\n<start_of_turn>model\n",
    "fallback": "\n\nAnswer: ",
}


def chunks(ctx_ids: list[int], size: int) -> list[list[int]]:
    """`chunk_fn`: contiguous slices of `size`, the last one shorter."""
    if len(ctx_ids) <= size:
        return [ctx_ids]
    return [ctx_ids[i : i + size] for i in range(0, len(ctx_ids), size)]


def repeat_inputs(
    encode: Callable[[str], list[int]], ctx_ids: list[int], postfix_ids: list[int], size: int = 2000, hint: int = 8
) -> list[tuple[list[int], list[int]]]:
    """`self_task`: (chunk, repeat ids) per chunk."""
    parts = chunks(ctx_ids, size)
    out = []
    for i, part in enumerate(parts):
        lead = encode(FIRST_PROMPT) if i == 0 else encode(NEXT_PROMPT) + parts[i - 1][-hint:]
        out.append((part, lead + postfix_ids + part))
    return out


def score(q: torch.Tensor, k: torch.Tensor, prefix: int, start: int, end: int) -> torch.Tensor:
    """One chunk's scores `[B, Hkv, end - start]` from the pass queries `q` `[B, H, n, d]` and the cache keys
    after the pass `k` `[B, Hkv, N + n, d]`; the chunk occupies cache positions start:end."""
    batch, heads, n, dim = q.shape
    n_kv = k.shape[1]
    grouped = q.view(batch, n_kv, heads // n_kv, n, dim)
    sub = torch.cat([k[:, :, :prefix], k[:, :, start:end], k[:, :, -n:]], dim=2)
    logits = torch.matmul(grouped, sub.unsqueeze(2).transpose(-2, -1)) / math.sqrt(dim)  # model dtype
    causal = torch.full((n, n), torch.finfo(logits.dtype).min)
    cols = torch.arange(n)
    causal = causal.masked_fill(cols[None, :] <= cols[:, None], 0)
    logits[..., -n:, -n:] += causal
    probs = torch.softmax(logits, dim=-1)[..., prefix : prefix + end - start]
    return probs.amax(dim=(-3, -2))


def threshold_keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Authors' global rule on context scores `[L, B, Hkv, C]`: keep-mask."""
    if ratio >= 1:
        return torch.ones_like(scores, dtype=torch.bool)
    ranked = torch.sort(scores.reshape(-1), descending=True).values
    threshold = ranked[max(int(len(ranked) * ratio) - 1, 0)].item()
    return scores > threshold


def top_keep(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Exactly `count` of `[L, B, Hkv, C]` (headprof's `cutoff="topk"`, no reference rule): `torch.topk` over
    all of them."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    return keep.scatter(0, torch.topk(scores.reshape(-1), count).indices, True).view_as(scores)


def uniform_keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Authors' per-head rule on `[L, B, Hkv, C]`: topk(int(C * ratio)) in every head."""
    if ratio >= 1:
        return torch.ones_like(scores, dtype=torch.bool)
    count = int(scores.shape[-1] * ratio)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    return keep.scatter(-1, torch.topk(scores, count, dim=-1).indices, True)


def reference_scores(model, prefill_ids: list[int], prefix: int, postfix_ids: list[int], encode, size=2000, hint=8):
    """The authors' scoring run with transformers alone: prefill once, then each chunk's repeat input on a copy
    of the prefill cache at positions N.., its queries and keys recorded by a registered attention function.

    Returns the context scores `[L, B, Hkv, C]` (C = len(prefill_ids) - prefix).
    """
    import copy

    from transformers import DynamicCache

    from oracles import register_recorder

    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    register_recorder("kvzip_oracle_capture", seen)
    device = next(model.parameters()).device
    total = len(prefill_ids)
    cache = DynamicCache(config=model.config)
    previous = model.config._attn_implementation
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(model.config.num_hidden_layers)]
    with torch.no_grad():
        model(torch.tensor([prefill_ids], device=device), cache=cache, use_cache=True)
        model.set_attn_implementation("kvzip_oracle_capture")
        try:
            start = prefix
            for part, repeat in repeat_inputs(encode, prefill_ids[prefix:], postfix_ids, size, hint):
                ids = torch.tensor([repeat], device=device)
                positions = torch.arange(total, total + len(repeat), device=device)[None]
                model(ids, cache=copy.deepcopy(cache), use_cache=True, position_ids=positions)
                for layer, (query, key) in seen.items():
                    per_layer[layer].append(score(query, key, prefix, start, start + len(part)))
                start += len(part)
        finally:
            model.set_attn_implementation(previous)
    return torch.stack([torch.cat(chunk_scores, dim=-1) for chunk_scores in per_layer])
