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
from headprof.runtime.press import Press, PressStats

ScoreKey = tuple[type, object, int, int]  # method class, options, window, stored heads per layer


def _score_key(press: Press) -> ScoreKey:
    """Presses whose methods score a prompt the same way share one computation of the scores."""
    return type(press.method), press.method.options, press.plan.window, int(press.plan.budgets.shape[1])


@torch.no_grad()
def sweep_answers(
    loaded: LoadedModel, presses: Sequence[Press], prompt_ids: list[int], context_tokens: int, max_new_tokens: int
) -> list[RunResult]:
    """Greedy answers to one prompt under every press (one per method x budget), in the order given, equal to
    `generate_answer` under each press alone; `prefill_s` is the shared prefill's time."""
    check_length(loaded, len(prompt_ids), max_new_tokens)
    ids = torch.tensor([prompt_ids], device=loaded.device)
    results: dict[int, RunResult] = {}
    aware = [i for i, p in enumerate(presses) if not p.method.query_agnostic]
    agnostic = [i for i, p in enumerate(presses) if p.method.query_agnostic]
    if any(presses[i].method.compresses for i in aware):
        results.update(_query_aware(loaded, [(i, presses[i]) for i in aware], ids, max_new_tokens))
    else:  # only the full cache: nothing to share
        results.update({i: generate_answer(loaded, presses[i], prompt_ids, 0, max_new_tokens) for i in aware})
    for group in _groups([(i, presses[i]) for i in agnostic]):
        results.update(_query_agnostic(loaded, group, ids, context_tokens, max_new_tokens))
    return [results[i] for i in range(len(presses))]


def _groups(indexed: list[tuple[int, Press]]) -> list[list[tuple[int, Press]]]:
    """Presses grouped by how they score, in first-seen order."""
    groups: dict[ScoreKey, list[tuple[int, Press]]] = {}
    for i, press in indexed:
        groups.setdefault(_score_key(press), []).append((i, press))
    return list(groups.values())


def _query_aware(
    loaded: LoadedModel, indexed: list[tuple[int, Press]], ids: torch.Tensor, max_new_tokens: int
) -> dict[int, RunResult]:
    """One prefill of the whole prompt, every method's scores from its queries, then each cache decoded."""
    compressing = [(i, p) for i, p in indexed if p.method.compresses]
    dense = compressing[0][1].new_cache()
    dense.defer()
    scorers = {_score_key(group[0][1]): group[0][1] for group in _groups(compressing)}
    scores: dict[ScoreKey, dict[int, torch.Tensor]] = {key: {} for key in scorers}

    def observe(index: int, query: torch.Tensor, keys: torch.Tensor, scaling: float) -> None:
        for key, press in scorers.items():
            n_stored = int(press.plan.budgets.shape[1])
            scores[key][index] = press.method.score(query, keys, scaling, press.plan.window, n_stored)

    dense.observe(observe)
    started = time.perf_counter()
    with attention_switched(loaded.model, ATTENTION_IMPL):
        first, _, _ = greedy(loaded, ids, dense, 1)
    prefill_s = time.perf_counter() - started
    dense.observe(None)
    total = ids.shape[1]
    stop = _stop_ids(loaded)
    results = {}
    for i, press in indexed:
        if press.method.compresses:
            cache: Cache = press.new_cache()
            cache.set_budgets(press.method.budgets_for(press.plan, total))
            cache.adopt(dense, total)
            cache.compress_all(scores[_score_key(press)])
            stats = PressStats(total, prefill_s, cache.stats.compress_seconds, cache.stats.compressed_heads > 0)
        else:
            cache = _full_cache(loaded, dense)
            stats = PressStats(total, prefill_s)
        new, decode_s = first, 0.0
        if int(first[0]) not in stop and max_new_tokens > 1:
            with press:
                rest, cache, decode_s = greedy(loaded, torch.cat([ids, first[None]], dim=1), cache, max_new_tokens - 1)
            new = torch.cat([first, rest])
        results[i] = run_result(loaded, stats, total, new, cache, decode_s)
    return results


def _query_agnostic(
    loaded: LoadedModel, indexed: list[tuple[int, Press]], ids: torch.Tensor, context_tokens: int, max_new_tokens: int
) -> dict[int, RunResult]:
    """One dense prefill of the context and one set of extra passes for every budget of a query-agnostic method."""
    scorer = indexed[0][1]
    context = ids[:, :context_tokens]
    passes = scorer.method.extra_passes(context, scorer.tokenizer)
    dense = scorer.new_cache()
    dense.defer()
    if passes is not None:
        scorer.check_positions(context_tokens, passes)
    started = time.perf_counter()
    with attention_switched(loaded.model, ATTENTION_IMPL):
        loaded.model(input_ids=context, cache=dense, use_cache=True, logits_to_keep=1)
    scores = scorer.pass_scores(dense, passes or [])
    prefill_s = time.perf_counter() - started
    results = {}
    for i, press in indexed:
        cache = press.new_cache()
        cache.set_budgets(press.method.budgets_for(press.plan, context_tokens))
        cache.adopt(dense, context_tokens)
        cache.compress_all(scores)
        press.stats = PressStats(
            context_tokens, prefill_s, cache.stats.compress_seconds, cache.stats.compressed_heads > 0
        )
        results[i] = generate_answer(loaded, press, ids[0].tolist(), context_tokens, max_new_tokens, cache)
    return results


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
