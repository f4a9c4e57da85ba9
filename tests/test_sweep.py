"""Sweep-once evaluation: one prefill per item serves every method x budget, with the answers, token for token,
and the KV bytes of running each configuration alone (`headprof.runtime.sweep`)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from headprof import evaluation as E
from headprof.artifacts import load_scores
from headprof.models import LoadedModel, info_from_config
from headprof.probes import build_probes, load_needles
from headprof.runtime import BudgetSource, build_method, build_press
from headprof.runtime.cache import CompressedCache
from headprof.runtime.generation import generate_answer, greedy
from headprof.runtime.press import cache_bytes
from headprof.runtime.sweep import SweepPrompt, sweep_answers, sweep_prompts

from families import random_scores, tiny_model, token_ids
from helpers import NEEDLES, REFERENCE

ALL = ("full", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv", "kvzip")


@pytest.fixture(scope="module")
def items(tokenizer):
    needles = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")[:1]
    probes = build_probes(needles, tokenizer, lengths=(320,), depths=(30,), tokenizer_name="smollm2-135m")
    return E.items_from_probes(tokenizer, probes)


def _same(alone, swept) -> None:
    for a, s in zip(alone, swept, strict=True):
        assert (s.answer, s.new_tokens, s.kv_bytes, s.kv_bytes_full, s.compressed) == (
            a.answer,
            a.new_tokens,
            a.kv_bytes,
            a.kv_bytes_full,
            a.compressed,
        )


def test_eval_sweep_gives_the_records_of_each_configuration_alone(loaded, items):
    """`evaluate`'s default (one prefill per item, its caches decoded as one batch) gives the records of each
    configuration alone: a batch's floats differ in the last bits, so only a rounding-level tie could flip a
    greedy token, and none does here (0 of 15 records)."""
    scores = load_scores(REFERENCE / "scores.safetensors")
    swept = E.evaluate(loaded, items, E.EvalConfig(ALL, (64, 128), max_new_tokens=16), scores)
    alone = E.evaluate(loaded, items, E.EvalConfig(ALL, (64, 128), max_new_tokens=16, sweep=False), scores)
    assert swept == alone and len(swept) == len(items) * (1 + 7 * 2)
    assert all(r.exact for r in swept if r.method == "full")  # the answers are real ones
    assert len({r.answer for r in swept}) > 2  # and the budgets change them
    exact = E.evaluate(loaded, items, E.EvalConfig(ALL, (64, 128), max_new_tokens=16, decode_together=False), scores)
    assert exact == alone  # each decoded alone after the shared prefill: token for token a single run


def test_sweep_mixes_layouts_and_method_options(loaded, items, tokenizer):
    """Presses that score alike share their scores, the others do not: the query-head layout, H2O's decode-time
    eviction, KVzip's per-head selection, AdaKV's kvpress floor and StreamingLLM's sink count in one sweep."""
    scores = load_scores(REFERENCE / "scores.safetensors")
    settings = [
        ("headkv", {}, "query", 96),
        ("headkv", {}, "kv", 96),
        ("h2o", {"decode": "evict"}, "kv", 64),
        ("adakv", {"floor_rule": "kvpress"}, "kv", 64),
        ("streamingllm", {"sinks": 2}, "kv", 64),
        ("kvzip", {"selection": "uniform"}, "kv", 64),
        ("kvzip", {}, "kv", 64),
    ]
    presses = []
    for name, options, gqa, budget in settings:
        source = BudgetSource(budget, scores=scores, gqa=gqa, window=32)
        presses.append(build_press(loaded.model, name, source, options=options, tokenizer=tokenizer))
    item = items[0]
    swept = sweep_answers(loaded, presses, item.prompt_ids, item.context_tokens, 8, decode_together=False)
    alone = [generate_answer(loaded, p, item.prompt_ids, item.context_tokens, 8) for p in presses]
    _same(alone, swept)
    assert swept[0].kv_bytes > swept[1].kv_bytes  # the query-head layout repeats shared KV heads


@pytest.mark.parametrize("name", ["mistral", "gemma2", "gpt-oss", "qwen2-window"])
def test_sweep_on_sliding_window_soft_capped_and_sink_families(name, tokenizer):
    """Sliding-window layers keep their window in every configuration (and in the full cache built from the
    sweep's dense prompt); soft-capping and sinks reach the methods' scores as in a single run."""
    net = tiny_model(name, vocab=len(tokenizer))  # KVzip's reconstruction prompts are the tokenizer's text
    info = info_from_config(net.config, f"tiny/{name}")
    loaded = LoadedModel(net, tokenizer, None, info)
    presses = []
    for method_name in ALL:
        method = build_method(method_name)
        for budget in (None,) if method_name == "full" else (12, 24):
            source = BudgetSource(budget or 0, scores=random_scores(info), window=8)
            presses.append(build_press(net, method, source, tokenizer=tokenizer, info=info))
    ids = token_ids(48)[0].tolist()
    swept = sweep_answers(loaded, presses, ids, 36, 5, decode_together=False)
    alone = [generate_answer(loaded, p, ids, 36, 5) for p in presses]
    _same(alone, swept)
    assert len({r.kv_bytes for r in swept}) > (3 if info.global_layers else 0)  # Mistral: every layer is a window
    # decoded as one batch: every cache's bytes as after its own answer; random weights give near-uniform logits,
    # where a rounding-level tie can flip a greedy token, so most (not all) answers must agree
    together = sweep_answers(loaded, presses, ids, 36, 5)  # the default
    assert [r.kv_bytes for r in together] == [r.kv_bytes for r in alone]
    assert [r.kv_bytes_full for r in together] == [r.kv_bytes_full for r in alone]
    assert sum(a.answer == t.answer for a, t in zip(alone, together)) >= 0.8 * len(alone)
    # with a shorter prompt in the same batch (its rows left-padded, the windows too): the same bytes and answers
    shorter = token_ids(40, seed=2)[0].tolist()
    both = sweep_prompts(loaded, [SweepPrompt(presses, ids, 36), SweepPrompt(presses, shorter, 30)], 5)
    assert [r.kv_bytes for r in both[0]] == [r.kv_bytes for r in alone]
    short_alone = [generate_answer(loaded, p, shorter, 30, 5) for p in presses]
    assert [r.kv_bytes for r in both[1]] == [r.kv_bytes for r in short_alone]
    pairs = list(zip(alone + short_alone, both[0] + both[1]))
    assert sum(a.answer == t.answer for a, t in pairs) >= 0.8 * len(pairs)


def test_methods_that_vote_alike_share_their_scores():
    """The sweep computes window votes once per reduction and scoring options (`Method.score_key`): SnapKV and
    PyramidKV sum the window's rows, AdaKV and HeadKV average them, whatever their floors, spill or budgets."""
    key = {name: build_method(name).score_key for name in ("snapkv", "pyramidkv", "adakv", "headkv")}
    assert key["snapkv"] == key["pyramidkv"] != key["adakv"] == key["headkv"]
    assert build_method("adakv", floor=0.5).score_key == build_method("headkv", spill=True).score_key
    assert build_method("snapkv", votes=32).score_key != key["snapkv"]
    assert build_method("kvzip").score_key != build_method("kvzip", selection="uniform").score_key


def test_the_full_cache_joins_the_batch_as_a_cache_that_keeps_every_entry(loaded, items):
    """`CompressedCache.holding`: transformers' full cache as a compressed cache that keeps every entry (how the
    full cache joins a sweep's batch): the same bytes, every position, and the same greedy tokens."""
    ids = torch.tensor([items[0].prompt_ids])
    full = DynamicCache(config=loaded.model.config)
    with torch.no_grad():
        first = loaded.model(input_ids=ids, cache=full, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1)
    press = build_press(loaded.model, "snapkv", BudgetSource(64, window=32))
    held = CompressedCache.holding([layer.plan for layer in press.new_cache().layers], full)
    assert cache_bytes(held)["kv_bytes"] == cache_bytes(full)["kv_bytes"]
    assert all(torch.equal(p, torch.arange(ids.shape[1])) for p in held.kept_positions(5))
    fed = torch.cat([ids, first[:, None]], dim=1)
    with torch.no_grad(), press:
        from_held = greedy(loaded, fed, held, 8)[0]
    with torch.no_grad():
        from_full = greedy(loaded, fed, full, 8)[0]
    assert torch.equal(from_held, from_full)


def test_items_of_different_lengths_decode_in_one_batch(loaded, tokenizer):
    """Decoded together, the caches of several items (prompts of different lengths, left-padded as transformers
    batches them) give the records of each configuration alone, in one batch or one batch per item."""
    needles = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")[:1]
    probes = build_probes(needles, tokenizer, lengths=(200, 320), depths=(30,), tokenizer_name="smollm2-135m")
    two = E.items_from_probes(tokenizer, probes)
    assert len({len(item.prompt_ids) for item in two}) == 2
    scores = load_scores(REFERENCE / "scores.safetensors")
    methods = ("full", "snapkv", "headkv", "kvzip")
    alone = E.evaluate(loaded, two, E.EvalConfig(methods, (64,), max_new_tokens=16, sweep=False), scores)
    for decode_tokens in (8192, 1):  # both items in one batch; each item its own
        config = E.EvalConfig(methods, (64,), max_new_tokens=16, decode_tokens=decode_tokens)
        assert E.evaluate(loaded, two, config, scores) == alone
    assert sum(r.exact for r in alone) >= 2, alone  # real answers
