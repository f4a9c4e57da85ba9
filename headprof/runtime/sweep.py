"""Sweep-once: every method x budget of an evaluation from one exact prefill of each prompt.

Why this is exact: every layer attends over the prompt's dense K/V and compresses only after that
attention, so the prompt's hidden states, the first answer token and every statistic a method selects
from (window votes, accumulated attention) are the same for every method and budget. One prefill that
keeps the dense cache (`CompressedCache.defer`) and hands each layer's queries to every method's `score`
(`CompressedCache.observe`) therefore gives all of them. Each configuration's cache is then compressed
from that dense prompt (`CompressedCache.adopt` + `compress_all`: the selection code of a single run),
and decoded on its own from the shared first token; the full cache is transformers' `DynamicCache`
filled with the same dense K/V. The answers are those of running each configuration alone
(`tests/test_sweep.py` checks it token for token).

A query-agnostic method (KVzip) compresses the context alone. Prefilling the context alone and the whole
prompt give the context's K/V equal only up to float rounding, so the context gets its own dense prefill,
and its reconstruction passes run once for all budgets (their scores do not depend on the budget); each
budget's cache is selected from those scores and the question is fed on top, as in a single run.

Memory bound: one prompt's dense K/V at a time (two with KVzip: the prompt's and the context's), each
method's `[S, T]` scores per layer, and one compressed cache at a time while it decodes.

`decode_together` (the default) decodes the compressed caches of one prompt as one batch (`CompressedCache.stack`):
a decode step then costs about one step for all of them, where decoding dominates a sweep. A batch of several rows
runs the model's matrix products in other shapes than a single row does, so its floats differ in the last bits
from a run alone, and a greedy answer can differ where two tokens tie within that rounding (none did on the
embedded model's probes, `tests/test_sweep.py`); `decode_together=False` decodes each alone, token for token a
single run. Memory: all of an item's compressed caches at once, each padded to the longest while decoding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicCache

from headprof.models.loading import LoadedModel
from headprof.models.registry import attention_switched
from headprof.runtime.cache import ATTENTION_IMPL, CompressedCache
from headprof.runtime.generation import RunResult, check_length, generate_answer, greedy, run_result
from headprof.runtime.press import Press, PressStats, cache_bytes, prompt_stats

Prepared = tuple[int, Press, Cache, PressStats]  # a configuration's cache, ready to decode, and its prompt's cost


@torch.no_grad()
def sweep_answers(
    loaded: LoadedModel,
    presses: Sequence[Press],
    prompt_ids: list[int],
    context_tokens: int,
    max_new_tokens: int,
    decode_together: bool = True,
) -> list[RunResult]:
    """Greedy answers to one prompt under every press (one per method x budget), in the order given, equal to
    `generate_answer` under each press alone; `prefill_s` is the shared prefill's time. `decode_together`: decode
    the compressed caches as one batch (see the module's docstring)."""
    check_length(loaded, len(prompt_ids), max_new_tokens)
    ids = torch.tensor([prompt_ids], device=loaded.device)
    results: dict[int, RunResult] = {}
    aware = [(i, p) for i, p in enumerate(presses) if not p.method.query_agnostic]
    if any(p.method.compresses for _, p in aware):
        prepared, first = _query_aware(loaded, aware, ids)
        results.update(
            _decode(loaded, prepared, torch.cat([ids, first], dim=1), max_new_tokens - 1, first, decode_together)
        )
    else:  # only the full cache: nothing to share
        results.update({i: generate_answer(loaded, p, prompt_ids, 0, max_new_tokens) for i, p in aware})
    for group in _groups([(i, p) for i, p in enumerate(presses) if p.method.query_agnostic]):
        prepared = _query_agnostic(loaded, group, ids, context_tokens)
        results.update(_decode(loaded, prepared, ids, max_new_tokens, None, decode_together))
    return [results[i] for i in range(len(presses))]


def _groups(indexed: list[tuple[int, Press]]) -> list[list[tuple[int, Press]]]:
    """Presses grouped by how they score (`Press.scoring`), in first-seen order."""
    groups: dict[object, list[tuple[int, Press]]] = {}
    for i, press in indexed:
        groups.setdefault(press.scoring, []).append((i, press))
    return list(groups.values())


def _query_aware(
    loaded: LoadedModel, indexed: list[tuple[int, Press]], ids: torch.Tensor
) -> tuple[list[Prepared], torch.Tensor]:
    """One prefill of the whole prompt and every method's scores from its queries: each configuration's cache,
    and the first answer token `[1, 1]`, the same for all."""
    compressing = [(i, p) for i, p in indexed if p.method.compresses]
    dense = compressing[0][1].new_cache()
    dense.defer()
    scorers = {group[0][1].scoring: group[0][1] for group in _groups(compressing)}
    scores: dict[object, dict[int, torch.Tensor]] = {key: {} for key in scorers}

    def observe(index: int, query: torch.Tensor, keys: torch.Tensor, scaling: float) -> None:
        for key, press in scorers.items():
            scores[key][index] = press.score_prompt(query, keys, scaling)

    dense.observe(observe)
    started = time.perf_counter()
    with attention_switched(loaded.model, ATTENTION_IMPL):
        first, _, _ = greedy(loaded, ids, dense, 1)
    prefill_s = time.perf_counter() - started
    dense.observe(None)
    total = ids.shape[1]
    prepared: list[Prepared] = []
    for i, press in indexed:
        if press.method.compresses:
            prepared.append((i, press, *press.compress_from(dense, total, scores[press.scoring], prefill_s)))
        else:
            prepared.append((i, press, _full_cache(loaded, dense), prompt_stats(None, total, prefill_s)))
    return prepared, first


def _query_agnostic(
    loaded: LoadedModel, indexed: list[tuple[int, Press]], ids: torch.Tensor, context_tokens: int
) -> list[Prepared]:
    """One dense prefill of the context and one set of extra passes for every budget of a query-agnostic method:
    each budget's compressed context."""
    scorer = indexed[0][1]
    context = ids[:, :context_tokens]
    dense = scorer.new_cache()
    passes = scorer.begin_prompt(dense, context, context_tokens)
    dense.defer()  # also without passes: every budget is compressed from this prompt
    started = time.perf_counter()
    with attention_switched(loaded.model, ATTENTION_IMPL):
        loaded.model(input_ids=context, cache=dense, use_cache=True, logits_to_keep=1)
    scores = scorer.pass_scores(dense, passes or [])
    prefill_s = time.perf_counter() - started
    return [(i, press, *press.compress_from(dense, context_tokens, scores, prefill_s)) for i, press in indexed]


def _decode(
    loaded: LoadedModel,
    prepared: list[Prepared],
    ids: torch.Tensor,
    max_new_tokens: int,
    first: torch.Tensor | None,
    decode_together: bool,
) -> dict[int, RunResult]:
    """Greedy answers from prepared caches; `ids` holds the prompt (and `first`, the answer's first token when
    the prompt's own pass gave it). Alone, each cache as a single run decodes it; together, the compressed
    caches of one layout as one batch."""
    prompt_tokens = ids.shape[1] - (first is not None)
    results = {}
    if first is not None and (int(first) in _stop_ids(loaded) or max_new_tokens < 1):
        for i, _, cache, stats in prepared:  # the answer ended at its first token
            results[i] = run_result(loaded, stats, prompt_tokens, first[0], cache_bytes(cache), prompt_tokens, 0.0)
        return results
    batches: dict[object, list[Prepared]] = {}
    for entry in prepared:
        cache, method = entry[2], entry[1].method
        stackable = decode_together and isinstance(cache, CompressedCache) and not method.evicts
        layout = cache.budgeted[0].n_stored if stackable and cache.budgeted else 0
        batches.setdefault(("stack", layout) if stackable else ("alone", entry[0]), []).append(entry)
    for batch in batches.values():
        if len(batch) == 1:
            i, press, cache, stats = batch[0]
            with press:
                new, cache, decode_s = greedy(loaded, ids, cache, max_new_tokens)
            new = new[0] if first is None else torch.cat([first[0], new[0]])
            sizes, tokens = cache_bytes(cache), cache.get_seq_length()
            results[i] = run_result(loaded, stats, prompt_tokens, new, sizes, tokens, decode_s)
            continue
        stacked = CompressedCache.stack([entry[2] for entry in batch])
        with batch[0][1]:
            rows, _, decode_s = greedy(loaded, ids.expand(len(batch), -1), stacked, max_new_tokens)
        for (i, _, cache, stats), row in zip(batch, rows):
            new = _until_stop(loaded, row if first is None else torch.cat([first[0], row]))
            generated = new.numel() - (first is not None)  # the last one never runs through the cache
            fed = ids.shape[1] - cache.get_seq_length() + generated - 1
            # the batch ran on to its longest answer: this cache's bytes as after its own `fed` tokens
            sizes = {"kv_bytes": cache.kv_bytes_after(fed), "padding_bytes": 0}
            sizes["index_bytes"] = cache.kv_bytes()["index_bytes"]
            tokens = cache.get_seq_length() + fed
            results[i] = run_result(loaded, stats, prompt_tokens, new, sizes, tokens, decode_s)
    return results


def _until_stop(loaded: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """A batch row's answer: its tokens up to and with its first stop token (a batch pads finished rows)."""
    stop = _stop_ids(loaded)
    for position, token in enumerate(tokens.tolist()):
        if token in stop:
            return tokens[: position + 1]
    return tokens


def _full_cache(loaded: LoadedModel, dense: CompressedCache) -> DynamicCache:
    """transformers' own cache holding the dense prompt (its sliding-window layers keep their window)."""
    cache = DynamicCache(config=loaded.model.config)
    for index, layer in enumerate(dense.layers):
        cache.update(layer.keys, layer.values, index)
    return cache


def _stop_ids(loaded: LoadedModel) -> set[int]:
    """The token ids that end a greedy answer (the generation config's EOS)."""
    eos = loaded.model.generation_config.eos_token_id
    return set() if eos is None else {int(e) for e in ([eos] if isinstance(eos, int) else eos)}
