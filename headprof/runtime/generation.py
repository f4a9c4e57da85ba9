"""Answer one question about one context with a compressed cache, and measure what it cost.

Query-aware methods compress the whole prompt (context + question) at its end. KVzip is
query-agnostic: it compresses the context alone, then the question is fed on top of the
compressed cache, as it would be for any later question about the same context.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from headprof.allocation import full_kv_bytes
from headprof.errors import HeadprofError
from headprof.models.loading import LoadedModel
from headprof.probes import encode_text, render_prompt
from headprof.runtime.press import Press, PressStats, cache_bytes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from transformers.cache_utils import Cache


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

    def report(self, method: str) -> dict[str, Any]:
        """What `headprof run` reports of it (times rounded), under the method's name."""
        fields = ("answer", "kv_bytes", "kv_bytes_full", "index_bytes", "prompt_tokens")
        return {
            **{name: getattr(self, name) for name in fields},
            "prefill_s": round(self.prefill_s, 4),
            "compress_s": round(self.compress_s, 4),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
            "method": method,
            "compressed": self.compressed,
        }


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
    loaded: LoadedModel,
    press: Press,
    prompt_ids: list[int],
    context_tokens: int,
    max_new_tokens: int = 64,
    context_cache: Cache | None = None,
) -> RunResult:
    """Greedy answer; a query-agnostic method first compresses the `context_tokens` prefix alone (or takes
    `context_cache`, that prefix already compressed: a sweep compresses it once per budget from one prefill)."""
    check_length(loaded, len(prompt_ids), max_new_tokens)
    ids = torch.tensor([prompt_ids], device=loaded.device)
    cache = context_cache
    if press.method.query_agnostic and cache is None:
        cache = press.prefill(ids[:, :context_tokens])
    with press:
        new, out_cache, elapsed = greedy(loaded, ids, cache, max_new_tokens)
    decode_s = elapsed if press.method.query_agnostic else elapsed - press.stats.prefill_seconds
    sizes, tokens = cache_bytes(out_cache), out_cache.get_seq_length()
    return run_result(loaded, press.stats, ids.shape[1], new[0], sizes, tokens, decode_s)


def check_length(loaded: LoadedModel, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse an answer that cannot fit the model's window."""
    if max_new_tokens < 1:
        raise HeadprofError("max-new-tokens must be at least 1")
    limit = loaded.info.max_context
    if limit and prompt_tokens + max_new_tokens > limit:
        raise HeadprofError(
            f"prompt of {prompt_tokens} tokens + {max_new_tokens} new exceeds the model's {limit}-token window"
        )


def greedy(
    loaded: LoadedModel, ids: torch.Tensor, cache: Cache | None, max_new_tokens: int
) -> tuple[torch.Tensor, Cache, float]:
    """`generate` greedily from `ids` `[B, n]` (the tokens `cache` holds are not fed again): (new tokens
    `[B, k]`, the cache after them, seconds)."""
    started = time.perf_counter()
    out = loaded.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        cache=cache,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=loaded.tokenizer.eos_token_id,
        return_dict_in_generate=True,
    )
    return out.sequences[:, ids.shape[1] :], out.cache, time.perf_counter() - started


def run_result(
    loaded: LoadedModel,
    stats: PressStats,
    prompt_tokens: int,
    new: torch.Tensor,
    sizes: dict[str, int],
    cache_tokens: int,
    decode_s: float,
) -> RunResult:
    """The answer `new` decodes to, with what it cost: the cache's `sizes` (`cache_bytes`) once it holds
    `cache_tokens` tokens, the press's prompt statistics and the decode rate (tokens after the first over
    `decode_s`)."""
    element = next(loaded.model.parameters()).element_size()
    return RunResult(
        answer=loaded.tokenizer.decode(new, skip_special_tokens=True).strip(),
        prompt_tokens=prompt_tokens,
        new_tokens=int(new.numel()),
        kv_bytes=sizes["kv_bytes"],
        kv_bytes_full=full_kv_bytes(loaded.info, element, cache_tokens),
        padding_bytes=sizes["padding_bytes"],
        index_bytes=sizes["index_bytes"],
        prefill_s=stats.prefill_seconds,
        compress_s=stats.compress_seconds,
        decode_tokens_per_s=max(0, int(new.numel()) - 1) / decode_s if decode_s > 0 else 0.0,
        compressed=stats.compressed,
    )
