"""Sweep-once: every method x budget of an evaluation from one exact prefill of each prompt.

Why this is exact: every layer attends over the prompt's dense K/V and compresses only after that
attention, so the prompt's hidden states, the first answer token and every statistic a method selects
from (window votes, accumulated attention) are the same for every method and budget. One prefill that
keeps the dense cache (`CompressedCache.defer`) and hands each layer's queries to every method's `score`
(`CompressedCache.observe`) therefore gives all of them. Each configuration's cache is then compressed
from that dense prompt (`CompressedCache.adopt` + `compress_all`: the selection code of a single run),
and decoded from the shared first token (alone, or in one batch: below); the full cache is transformers'
`DynamicCache` filled with the same dense K/V. The answers are those of running each configuration alone
(`tests/test_sweep.py` checks it token for token).

A query-agnostic method (KVzip) compresses the context alone; its reconstruction passes run once for all
budgets (their scores do not depend on the budget); each budget's cache is selected from those scores and the
question is fed on top, as in a single run. Prefilling the context alone and the whole prompt give the
context's K/V equal only up to float rounding (the products run in other shapes), so with
`decode_together=False` the context gets its own dense prefill, as a single run does.

`decode_together` (the default) trades token-for-token equality for time, where rounding is all that differs:
- KVzip's context is the first tokens of the whole prompt's dense prefill (`CompressedCache.adopt`): no prefill
  of its own;
- the compressed caches of one prompt are decoded as one batch (`CompressedCache.stack`): KVzip's caches get their
  question together (one batch), then the question becomes kept entries (`CompressedCache.fold_recent`), so they
  hold the whole prompt, as the query-aware caches do, and join the same batch, each row from its own first token;
- `sweep_prompts` decodes the caches of several prompts as that one batch, rows of different prompts left-padded
  as transformers batches prompts of different lengths (`CompressedCache.stack_prompts`: no padding inside kept
  entries, each row's positions from the batch's mask). At a few dozen rows a decode step costs about what one
  row's does (the weights are read once a step), so this is where most of the time goes away.
A batch of several rows runs the model's matrix products in other shapes than a single row does, so its floats
differ in the last bits from a run alone, and a greedy answer can differ where two tokens tie within that
rounding (`benchmarks/sweep.py` counts them; none on the embedded model's probes, `tests/test_sweep.py`). The
full cache joins the batch as a cache that keeps every entry (`CompressedCache.holding`: the same entries and
bytes; not on a model with sliding-window layers, where it stays transformers' `DynamicCache`, decoded alone). A
method that evicts while decoding (H2O's `decode="evict"`) decodes alone. `decode_together=False` decodes each
alone, token for token a single run.

Memory bound: one prompt's dense K/V (KVzip decoded alone: its context's too) and KVzip's passes on top of its
context, each method's `[S, T]` scores per layer, and the compressed caches: one at a time decoded alone; decoded
together, all caches of the prompts in the batch (the full cache's dense K/V among them: `evaluate` bounds the
prompts' tokens per batch, `EvalConfig.decode_tokens`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache

from headprof.models.loading import LoadedModel
from headprof.models.registry import attention_switched
from headprof.runtime.cache import ATTENTION_IMPL, CompressedCache
from headprof.runtime.generation import RunResult, check_length, generate_answer, greedy, run_result
from headprof.runtime.press import Press, PressStats, cache_bytes, prompt_stats

# a configuration's cache, ready to decode, its prompt's cost, and the answer's first token when the prompt's own
# pass gave it (None: the cache holds the context alone, the question is still to be fed); no cache and no stats:
# the full cache with no compressing press to share a prefill with (it runs as a single run)
Prepared = tuple[int, Press, Cache | None, PressStats | None, torch.Tensor | None]


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
    the compressed caches as one batch, and take KVzip's context from the shared prefill (see the module's
    docstring)."""
    return sweep_prompts(loaded, [SweepPrompt(presses, prompt_ids, context_tokens)], max_new_tokens, decode_together)[0]


class SweepPrompt(NamedTuple):
    """One prompt of a sweep: its presses (one per method x budget), its tokens, and how many are the context."""

    presses: Sequence[Press]
    prompt_ids: list[int]
    context_tokens: int


@torch.no_grad()
def sweep_prompts(
    loaded: LoadedModel, prompts: Sequence[SweepPrompt], max_new_tokens: int, decode_together: bool = True
) -> list[list[RunResult]]:
    """`sweep_answers` of several prompts: with `decode_together` the caches of all of them are decoded as one
    batch (rows of different prompts left-padded, as transformers batches prompts of different lengths:
    `CompressedCache.stack_prompts`), which costs little more than one prompt's batch where a step's cost is the
    weights' (a CPU's matrix products at a few rows, a GPU's decode)."""
    for prompt in prompts:
        check_length(loaded, len(prompt.prompt_ids), max_new_tokens)
    ids = [torch.tensor([prompt.prompt_ids], device=loaded.device) for prompt in prompts]
    prepared = [_prepare(loaded, prompt, row, decode_together) for prompt, row in zip(prompts, ids)]
    if decode_together:
        results = _decode_together(loaded, prepared, ids, max_new_tokens)
    else:
        results = [
            {e[0]: _decode_alone(loaded, e, row, max_new_tokens) for e in ready} for ready, row in zip(prepared, ids)
        ]
    return [[found[i] for i in range(len(prompt.presses))] for found, prompt in zip(results, prompts)]


def _prepare(loaded: LoadedModel, prompt: SweepPrompt, ids: torch.Tensor, decode_together: bool) -> list[Prepared]:
    """Every press's cache of one prompt (`ids` `[1, T]`), ready to decode (the full cache with no compressing
    press beside it is left to run as a single run)."""
    presses = prompt.presses
    if not any(p.method.compresses for p in presses):  # only the full cache: nothing to share
        return [(i, p, None, None, None) for i, p in enumerate(presses)]
    aware = [(i, p) for i, p in enumerate(presses) if not p.method.query_agnostic]
    prepared: list[Prepared] = []
    dense = None
    if any(p.method.compresses for _, p in aware):
        dense, entries = _query_aware(loaded, aware, ids)
        prepared += entries
    else:
        prepared += [(i, p, None, None, None) for i, p in aware]  # the full cache alone
    shared = dense if decode_together else None
    for group in _groups([(i, p) for i, p in enumerate(presses) if p.method.query_agnostic]):
        prepared += _query_agnostic(loaded, group, ids, prompt.context_tokens, shared)
    return prepared  # the dense prompt is freed here (the full cache holds its own views of the K/V)


def _groups(indexed: list[tuple[int, Press]]) -> list[list[tuple[int, Press]]]:
    """Presses grouped by how they score (`Press.scoring`), in first-seen order."""
    groups: dict[object, list[tuple[int, Press]]] = {}
    for i, press in indexed:
        groups.setdefault(press.scoring, []).append((i, press))
    return list(groups.values())


def _query_aware(
    loaded: LoadedModel, indexed: list[tuple[int, Press]], ids: torch.Tensor
) -> tuple[CompressedCache, list[Prepared]]:
    """One prefill of the whole prompt and every method's scores from its queries: the dense prompt, and each
    configuration's cache with the first answer token `[1]`, the same for all."""
    compressing = [(i, p) for i, p in indexed if p.method.compresses]
    dense = compressing[0][1].new_cache()
    dense.defer()
    scorers = {group[0][1].scoring: group[0][1] for group in _groups(compressing)}
    scores: dict[object, dict[int, torch.Tensor]] = {key: {} for key in scorers}

    def observe(
        index: int, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None, scaling: float
    ) -> None:
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
            prepared.append((i, press, *press.compress_from(dense, total, scores[press.scoring], prefill_s), first[0]))
        else:
            prepared.append((i, press, _full_cache(loaded, dense), prompt_stats(None, total, prefill_s), first[0]))
    return dense, prepared


def _query_agnostic(
    loaded: LoadedModel,
    indexed: list[tuple[int, Press]],
    ids: torch.Tensor,
    context_tokens: int,
    shared: CompressedCache | None,
) -> list[Prepared]:
    """One dense context and one set of extra passes for every budget of a query-agnostic method: each budget's
    compressed context. The context is prefilled alone (as a single run does), or taken from `shared`, the whole
    prompt's dense prefill (equal up to float rounding: a prefix's K/V do not depend on what follows it)."""
    scorer = indexed[0][1]
    context = ids[:, :context_tokens]
    dense = scorer.new_cache()
    passes = scorer.begin_prompt(dense, context, context_tokens)
    dense.defer()  # also without passes: every budget is compressed from this prompt
    started = time.perf_counter()
    if shared is None:
        with attention_switched(loaded.model, ATTENTION_IMPL):
            loaded.model(input_ids=context, cache=dense, use_cache=True, logits_to_keep=1)
    else:
        dense.adopt(shared, context_tokens)
    scores = scorer.pass_scores(dense, passes or [])
    prefill_s = time.perf_counter() - started
    return [(i, press, *press.compress_from(dense, context_tokens, scores, prefill_s), None) for i, press in indexed]


def _decode_alone(loaded: LoadedModel, entry: Prepared, ids: torch.Tensor, max_new_tokens: int) -> RunResult:
    """A prepared cache decoded as a single run decodes it: token for token its answer."""
    i, press, cache, stats, first = entry
    if cache is None:  # the full cache, with no compressing press to share a prefill with
        return generate_answer(loaded, press, ids[0].tolist(), 0, max_new_tokens)
    prompt_tokens = ids.shape[1]
    if first is not None and (int(first) in _stop_ids(loaded) or max_new_tokens == 1):
        return run_result(loaded, stats, prompt_tokens, first, cache_bytes(cache), prompt_tokens, 0.0)
    fed = ids if first is None else torch.cat([ids, first[None]], dim=1)
    with press:
        new, cache, decode_s = greedy(loaded, fed, cache, max_new_tokens - (first is not None))
    new = new[0] if first is None else torch.cat([first, new[0]])
    return run_result(loaded, stats, prompt_tokens, new, cache_bytes(cache), cache.get_seq_length(), decode_s)


def _decode_together(
    loaded: LoadedModel, prepared: list[list[Prepared]], ids: list[torch.Tensor], max_new_tokens: int
) -> list[dict[int, RunResult]]:
    """Every compressed cache of one layout, of every prompt, decoded as one batch from its own first token: a
    query-agnostic method's caches first get their question (together, per prompt: `_question_fed`), folded into
    their kept entries (`CompressedCache.fold_recent`), so that all hold their whole prompt; the full cache joins
    them (`_full_rows`). A method that evicts while decoding runs alone."""
    results: list[dict[int, RunResult]] = []
    parts: list[Part] = []
    for prompt, (ready, row_ids) in enumerate(zip(prepared, ids)):
        rows = [e for e in ready if _stackable(e)]
        rows += _full_rows(loaded, ready, rows)
        joined = {e[0] for e in rows}
        results.append({e[0]: _decode_alone(loaded, e, row_ids, max_new_tokens) for e in ready if e[0] not in joined})
        parts += [Part(prompt, [e], e[2], e[4]) for e in rows if e[4] is not None]
        for batch in _by_layout([Part(prompt, [e], e[2], None) for e in rows if e[4] is None]):
            parts.append(_question_fed(loaded, prompt, [part.entries[0] for part in batch], row_ids))
    stop = _stop_ids(loaded)
    for batch in _by_layout(parts):
        going = [
            n for n, part in enumerate(batch) if max_new_tokens > 1 and any(int(t) not in stop for t in part.firsts)
        ]
        decoded, decode_s = (
            _decode_batch(loaded, [batch[n] for n in going], ids, max_new_tokens) if going else ([], 0.0)
        )
        rows = iter(decoded)
        for n, part in enumerate(batch):
            for entry, first in zip(part.entries, part.firsts):
                row = next(rows) if n in going else first.new_empty(0)
                new = _until_stop(loaded, torch.cat([first[None], row]))
                results[part.prompt][entry[0]] = _batch_result(loaded, entry, ids[part.prompt], new, decode_s)
    return results


def _decode_batch(
    loaded: LoadedModel, batch: list[Part], ids: list[torch.Tensor], max_new_tokens: int
) -> tuple[list[torch.Tensor], float]:
    """The tokens after each row's first, its rows decoded as one batch, left-padded as transformers pads prompts
    of different lengths (`CompressedCache.stack_prompts`), and the seconds it took."""
    width = max(ids[part.prompt].shape[1] for part in batch)
    prompts = [ids[part.prompt][0] for part in batch for _ in part.entries]
    firsts = torch.cat([part.firsts for part in batch])
    fed = [
        nn.functional.pad(torch.cat([row, first[None]]), (width - row.numel(), 0))
        for row, first in zip(prompts, firsts)
    ]
    mask = [
        nn.functional.pad(torch.ones_like(row[:1]).expand(row.numel() + 1), (width - row.numel(), 0)) for row in prompts
    ]
    stacked = CompressedCache.stack_prompts([part.cache for part in batch], width)
    with batch[0].entries[0][1]:
        rows, _, decode_s = greedy(loaded, torch.stack(fed), stacked, max_new_tokens - 1, torch.stack(mask))
    return list(rows), decode_s


class Part(NamedTuple):
    """Rows of a decode batch from one prompt: their prepared entries, one cache holding them, their first
    tokens (None: a query-agnostic cache whose question is still to be fed)."""

    prompt: int
    entries: list[Prepared]
    cache: CompressedCache
    firsts: torch.Tensor | None


def _stackable(entry: Prepared) -> bool:
    """Whether a prepared cache can join a batch (a compressed one whose method does not evict while decoding)."""
    return isinstance(entry[2], CompressedCache) and not entry[1].method.evicts


def _full_rows(loaded: LoadedModel, prepared: list[Prepared], rows: list[Prepared]) -> list[Prepared]:
    """The full cache as a row of the compressed caches' batch (`CompressedCache.holding`), in the layout of a
    batch row that stores one row per KV head (as transformers' cache does: the same bytes); none where the batch
    has no such row, or the model has sliding-window layers (the full cache keeps transformers' windows)."""
    like = next((e[2] for e in rows if all(layer.n_stored == layer.n_kv for layer in e[2].budgeted)), None)
    if like is None or loaded.info.window_layers:
        return []
    plans = [layer.plan for layer in like.layers]
    return [
        (i, press, CompressedCache.holding(plans, cache), stats, first)
        for i, press, cache, stats, first in prepared
        if not press.method.compresses and cache is not None
    ]


def _by_layout(parts: list[Part]) -> list[list[Part]]:
    """Parts grouped by their cache's layout (stored rows per layer), in first-seen order."""
    groups: dict[int, list[Part]] = {}
    for part in parts:
        cache = part.cache
        groups.setdefault(cache.budgeted[0].n_stored if cache.budgeted else 0, []).append(part)
    return list(groups.values())


def _question_fed(loaded: LoadedModel, prompt: int, batch: list[Prepared], ids: torch.Tensor) -> Part:
    """Compressed contexts of one layout with the question fed on top as one batch: their cache, the question
    folded into its kept entries, and each one's first answer token."""
    stacked = CompressedCache.stack([entry[2] for entry in batch])
    with batch[0][1]:
        first, stacked, _ = greedy(loaded, ids.expand(len(batch), -1), stacked, 1)
    stacked.fold_recent()
    return Part(prompt, batch, stacked, first[:, 0])


def _batch_result(
    loaded: LoadedModel, entry: Prepared, ids: torch.Tensor, new: torch.Tensor, decode_s: float
) -> RunResult:
    """A batch row's result, with the bytes its own cache reports once the tokens of its answer have run through
    it (all but the last), as in a single run."""
    _, _, cache, stats, _ = entry
    fed = ids.shape[1] - cache.get_seq_length() + new.numel() - 1
    index = cache.kv_bytes()["index_bytes"] if entry[1].method.compresses else 0  # the full cache has no index
    sizes = {"kv_bytes": cache.kv_bytes_after(fed), "padding_bytes": 0, "index_bytes": index}
    return run_result(loaded, stats, ids.shape[1], new, sizes, cache.get_seq_length() + fed, decode_s)


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
