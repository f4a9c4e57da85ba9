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


def answer_questions(
    loaded: LoadedModel, press: Press, pairs: list[tuple[str, str]], max_new_tokens: int = 64
) -> list[RunResult]:
    """Answer several (context, question) pairs, decoded together (`generate_batch`): each prompt is prefilled
    and compressed alone, so each answer equals its prompt answered alone. A query-agnostic method compresses
    each context without its question (`answer_question`) and one that evicts while decoding keeps one prompt
    per cache: both answer one pair at a time."""
    if press.method.query_agnostic or press.method.evicts:
        return [answer_question(loaded, press, context, question, max_new_tokens) for context, question in pairs]
    prompts = []
    for context, question in pairs:
        if not context.strip():
            raise HeadprofError("empty context")
        prompt, templated = render_prompt(loaded.tokenizer, context, question)
        prompts.append(encode_text(loaded.tokenizer, prompt, templated)["input_ids"])
    answers, decode_s, cache = generate_batch(loaded, press, prompts, max_new_tokens)
    element = next(loaded.model.parameters()).element_size()
    results = []
    for row, (prompt_ids, new) in enumerate(zip(prompts, answers)):
        if press.batch_stats:  # prompts of different lengths under a compressing press: each row's own
            stats, held = press.batch_stats[row], press.batch_bytes[row]
        else:  # the full cache, or prompts of one length compressed as one batch: each row's share
            stats, held = press.stats, full_kv_bytes(loaded.info, element, len(prompt_ids))
            if press.method.compresses:
                held = cache_bytes(cache)["kv_bytes"] // len(prompts)
        sizes = {"kv_bytes": held, "padding_bytes": 0, "index_bytes": 0}
        results.append(run_result(loaded, stats, len(prompt_ids), torch.tensor(new), sizes, len(prompt_ids), decode_s))
    return results


@torch.no_grad()
def generate_batch(
    loaded: LoadedModel, press: Press, prompts: list[list[int]], max_new_tokens: int = 64
) -> tuple[list[list[int]], float, Cache]:
    """Greedy answers to different prompts decoded as one batch under `press`: left-padded for `generate`, each
    prompt prefilled (and compressed) on its own, every row stopping at its own EOS. Returns each prompt's new
    tokens (up to its first EOS, included, as `generate` returns them for the prompt alone), the seconds the batch
    decoded (prefills excluded) and the batch's cache after it."""
    if not prompts:
        raise HeadprofError("no prompts to answer")
    for prompt in prompts:
        check_length(loaded, len(prompt), max_new_tokens)
    width = max(map(len, prompts))
    pad = loaded.tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=loaded.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=loaded.device)
    with press:
        new, cache, elapsed = greedy(loaded, ids, None, max_new_tokens, mask)
    stops = eos_ids(loaded)
    answers = []
    for row in new.tolist():
        ends = [i for i, token in enumerate(row) if token in stops]
        answers.append(row[: ends[0] + 1] if ends else row)
    return answers, elapsed - press.stats.prefill_seconds, cache  # a padded batch's stats: its rows' sums


def eos_ids(loaded: LoadedModel) -> set[int]:
    """The tokens that end an answer: the tokenizer's EOS and the model's generation config's."""
    configured = loaded.model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured]
    return {token for token in [loaded.tokenizer.eos_token_id, *configured] if token is not None}


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
    loaded: LoadedModel,
    ids: torch.Tensor,
    cache: Cache | None,
    max_new_tokens: int,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Cache, float]:
    """`generate` greedily from `ids` `[B, n]` (the tokens `cache` holds are not fed again; `attention_mask`:
    a left-padded batch's, default all ones): (new tokens `[B, k]`, the cache after them, seconds)."""
    started = time.perf_counter()
    out = loaded.model.generate(
        ids,
        attention_mask=torch.ones_like(ids) if attention_mask is None else attention_mask,
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
