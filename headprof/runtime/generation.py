"""Answer one question about one context with a compressed cache, and measure what it cost.

Query-aware methods compress the whole prompt (context + question) at its end. KVzip is
query-agnostic: it compresses the context alone, then the question is fed on top of the
compressed cache, as it would be for any later question about the same context.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from headprof.allocation import full_kv_bytes
from headprof.errors import HeadprofError
from headprof.models.loading import LoadedModel
from headprof.probes import encode_text, render_prompt
from headprof.runtime.press import Press, cache_bytes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class RunResult:
    """One answer under a press, with what it cost: KV bytes, prefill, compression and decode time."""

    answer: str
    prompt_tokens: int
    new_tokens: int
    kv_bytes: int
    kv_bytes_full: int
    padding_bytes: int
    index_bytes: int
    prefill_s: float
    compress_s: float
    decode_tokens_per_s: float
    compressed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def context_prefix_length(tokenizer: PreTrainedTokenizerBase, prompt: str, templated: bool, context: str) -> int:
    """Number of prompt tokens up to the end of the context (the part a query-agnostic cache holds)."""
    end = prompt.find(context)
    if end < 0:
        raise HeadprofError("the chat template changed the context text; cannot split context from question")
    end += len(context)
    offsets = encode_text(tokenizer, prompt, templated, offsets=True)["offset_mapping"]
    return sum(1 for a, b in offsets if b <= end)


def answer_question(
    loaded: LoadedModel, press: Press, context: str, question: str, max_new_tokens: int = 64
) -> RunResult:
    """Render the prompt (chat template) and answer greedily under `press`."""
    if not context.strip():
        raise HeadprofError("empty context")
    prompt, templated = render_prompt(loaded.tokenizer, context, question)
    prompt_ids = encode_text(loaded.tokenizer, prompt, templated)["input_ids"]
    context_tokens = context_prefix_length(loaded.tokenizer, prompt, templated, context)
    return generate_answer(loaded, press, prompt_ids, context_tokens, max_new_tokens)


@torch.no_grad()
def generate_answer(
    loaded: LoadedModel, press: Press, prompt_ids: list[int], context_tokens: int, max_new_tokens: int = 64
) -> RunResult:
    """Greedy answer; a query-agnostic method first compresses the `context_tokens` prefix alone."""
    tokenizer, model = loaded.tokenizer, loaded.model
    if max_new_tokens < 1:
        raise HeadprofError("max-new-tokens must be at least 1")
    limit = loaded.info.max_context
    if limit and len(prompt_ids) + max_new_tokens > limit:
        raise HeadprofError(
            f"prompt of {len(prompt_ids)} tokens + {max_new_tokens} new exceeds the model's {limit}-token window"
        )
    ids = torch.tensor([prompt_ids], device=loaded.device)
    cache = None
    if press.method.query_agnostic:
        cache = press.prefill(ids[:, :context_tokens])
    with press:
        started = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            cache=cache,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.eos_token_id,
            return_dict_in_generate=True,
        )
        elapsed = time.perf_counter() - started
    new = out.sequences[0, ids.shape[1] :]
    decode_s = elapsed if press.method.query_agnostic else elapsed - press.stats.prefill_seconds
    sizes = cache_bytes(out.cache)
    info = loaded.info
    element = next(model.parameters()).element_size()
    return RunResult(
        answer=tokenizer.decode(new, skip_special_tokens=True).strip(),
        prompt_tokens=ids.shape[1],
        new_tokens=int(new.numel()),
        kv_bytes=sizes["kv_bytes"],
        kv_bytes_full=full_kv_bytes(info, element, out.cache.get_seq_length()),
        padding_bytes=sizes["padding_bytes"],
        index_bytes=sizes["index_bytes"],
        prefill_s=press.stats.prefill_seconds,
        compress_s=press.stats.compress_seconds,
        decode_tokens_per_s=max(0, int(new.numel()) - 1) / decode_s if decode_s > 0 else 0.0,
        compressed=press.stats.compressed,
    )
