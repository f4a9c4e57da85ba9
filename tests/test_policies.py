"""Allocation policies at equal bytes: every policy's budgets sum to exactly uniform B's, and the runtime keeps
exactly uniform B's bytes once heads capped at the prompt hand their excess on (`spill`)."""

from __future__ import annotations

import json

import pytest
import torch

from headprof.allocation import POLICIES, AllocConfig, allocate, allocate_artifact, spill
from headprof.allocation.policies import duo, headkv_floor, mixed_scores
from headprof.artifacts import load_scores
from headprof.errors import HeadprofError
from headprof.probes import build_probes, encode_probe, load_needles
from headprof.runtime import compressed

from helpers import NEEDLES, REFERENCE

EXACT = [p for p in POLICIES if p != "pyramid"]  # PyramidKV's integer schedule is KVCache-Factory's, a bit above


@pytest.fixture(scope="module")
def scores_artifact():
    return load_scores(REFERENCE / "scores.safetensors")


@pytest.mark.parametrize("policy", EXACT)
@pytest.mark.parametrize("gqa", ["kv", "query"])
@pytest.mark.parametrize("budget, window", [(32, 8), (64, 32), (128, 32)])
def test_every_policy_spends_exactly_uniform_bytes(scores_artifact, policy, gqa, budget, window):
    config = AllocConfig(budget, policy, window, gqa=gqa, top=4)
    art = allocate_artifact(scores_artifact, config, "r2", REFERENCE / "scores.safetensors")
    assert int(art.budgets.sum()) == budget * art.budgets.numel()
    assert int(art.budgets.min()) >= window
    assert art.meta["policy"] == policy and art.meta["parameters"] == config.parameters()


def test_duo_gives_the_top_heads_what_the_others_leave():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    budgets = duo(scores, AllocConfig(20, "duo", window=8, top=2, sinks=2))
    # 4 streaming heads keep 8 + 2; the top two (0.9, 0.5) share 20 * 6 - 40 = 80
    assert budgets.tolist() == [[10, 40, 10], [40, 10, 10]]
    with pytest.raises(HeadprofError, match="below the number"):
        duo(scores, AllocConfig(20, "duo", window=8, top=6))


def test_heads_below_the_window_keep_their_last_entries_only():
    from headprof.runtime.methods.headkv import HeadKV

    scores = torch.rand(1, 3, 10, generator=torch.Generator().manual_seed(0))
    chosen = HeadKV().select(scores, torch.tensor([2, 6, 5]), 4)
    assert chosen.lengths.tolist() == [2, 6, 5]
    assert chosen.positions[:2].tolist() == [8, 9]  # its own window of 2
    assert set(chosen.positions[2:8].tolist()) >= {6, 7, 8, 9}  # the others: the whole window and their best
    budgets = duo(torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]]), AllocConfig(20, "duo", 32, top=2, stream=8))
    assert budgets.tolist() == [[8, 44, 8], [44, 8, 8]]  # (20 * 6 - 8 * 4) / 2


def test_layer_floor_interpolates_between_headkv_and_per_layer_pools():
    scores = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    global_pool = headkv_floor(scores, AllocConfig(40, "headkv-floor", window=32, beta=2, layer_floor=0.0))
    # N = 8, M = 4, pool 16: all of it to the one scored head, as HeadKV
    assert global_pool.tolist() == [[52, 36], [36, 36]]
    per_layer = headkv_floor(scores, AllocConfig(40, "headkv-floor", window=32, beta=2, layer_floor=1.0))
    # each layer gets 8 of the pool: layer 0 by its scores, layer 1 (no score) evenly
    assert per_layer.tolist() == [[44, 36], [40, 40]]


def test_mix_weighs_normalised_scores():
    retrieval, r2 = torch.tensor([[3.0, 1.0]]), torch.tensor([[0.0, 0.5]])
    assert mixed_scores(retrieval, r2, 1.0).tolist() == [[0.75, 0.25]]
    assert mixed_scores(retrieval, r2, 0.5).tolist() == [[0.375, 0.625]]


def test_spill_hands_the_excess_of_capped_heads_on():
    budgets = torch.tensor([[300, 40, 20], [0, 0, 0], [30, 10, 0]])
    spilled = spill(budgets, 100)
    live = budgets > 0
    assert int(spilled.sum()) == 400 and int(spilled.max()) == 100
    assert torch.equal(spilled[~live], budgets[~live]) and bool((spilled[live] >= budgets[live].clamp(max=100)).all())
    assert torch.equal(spill(budgets, 1000), budgets)  # nothing above the cap: unchanged
    assert int(spill(torch.tensor([[900, 10]]), 100).sum()) == 200  # more than every head can hold: all capped


@pytest.fixture(scope="module")
def prompt(tokenizer):
    needle = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")[0]
    probe = build_probes([needle], tokenizer, lengths=(300,), depths=(50,))[0]
    return torch.tensor([encode_probe(tokenizer, probe).prompt_ids])


def _kv_bytes(model, press, ids):
    with press, torch.no_grad():
        cache = model(ids, use_cache=True).cache
    return cache.kv_bytes()["kv_bytes"]


@pytest.mark.parametrize("policy, stream", [("headkv", 0), ("duo", 0), ("duo", 8)])
def test_headkv_with_spill_keeps_exactly_uniform_bytes(loaded, prompt, scores_artifact, policy, stream):
    budget = 128  # some heads' budgets exceed the ~300-token prompt; stream 8: heads below the window
    config = AllocConfig(budget, policy, gqa="kv", stream=stream)
    art = allocate_artifact(scores_artifact, config, "r2", REFERENCE)
    assert int(art.budgets.max()) > prompt.shape[1]
    uniform = _kv_bytes(loaded.model, compressed(loaded.model, "snapkv", budget), prompt)
    reference = _kv_bytes(loaded.model, compressed(loaded.model, "headkv", allocation=art), prompt)
    equal = _kv_bytes(loaded.model, compressed(loaded.model, "headkv", allocation=art, spill=True), prompt)
    assert equal == uniform and reference < uniform


def test_allocate_refuses_out_of_range_knobs():
    for bad in ({"layer_floor": 1.5}, {"mix": -0.1}, {"top": 0}, {"sinks": -1}):
        with pytest.raises(HeadprofError):
            allocate(torch.ones(2, 2), AllocConfig(40, "headkv", window=8, **bad))


def test_kvzip_question_counts_against_its_budget_with_reserve(loaded, tokenizer):
    from headprof.evaluation import items_from_probes
    from headprof.runtime.generation import generate_answer

    needle = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")[0]
    item = items_from_probes(tokenizer, build_probes([needle], tokenizer, lengths=(300,), depths=(50,)))[0]
    question = len(item.prompt_ids) - item.context_tokens

    def kv_bytes(method, **options):
        press = compressed(loaded.model, method, 64, tokenizer=tokenizer, **options)
        return generate_answer(loaded, press, item.prompt_ids, item.context_tokens, 1).kv_bytes

    uniform = kv_bytes("snapkv")
    per_token = 2 * loaded.info.head_dim * 4 * loaded.info.n_layers * loaded.info.n_kv_heads  # fp32 on CPU
    assert kv_bytes("kvzip", cutoff="topk") == uniform + question * per_token  # the authors': the question on top
    assert kv_bytes("kvzip", cutoff="topk", reserve=question) == uniform


def test_eval_compares_allocations_and_methods_at_equal_bytes(cli, tmp_path, tokenizer):
    from headprof.probes import write_probes

    needle = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")[0]
    write_probes(tmp_path / "p.jsonl", build_probes([needle], tokenizer, lengths=(300,), depths=(50,)))
    scores = REFERENCE / "scores.safetensors"
    for policy in ("duo", "headkv-floor"):
        args = ("allocate", "--scores", scores, "--budget", "128", "--policy", policy, "--out", f"{policy}.st")
        assert cli(*args, cwd=tmp_path).code == 0
    args = ("eval", "--probes", "p.jsonl", "--methods", "snapkv,headkv,kvzip", "--budgets", "128", "--scores", scores)
    result = cli(
        *args, "--alloc", "duo.st", "--alloc", "headkv-floor.st", "--max-new-tokens", "1", "--json", cwd=tmp_path
    )
    assert result.code == 0, result.stderr
    rows = {(r["method"], r["budget"]): r["kv_bytes"] for r in json.loads(result.stdout)["results"]}
    assert set(rows) == {(m, 128) for m in ("snapkv", "headkv", "kvzip", "duo", "headkv-floor")}
    assert len(set(rows.values())) == 1  # every column holds uniform B's bytes
    twice = cli(*args, "--alloc", "duo.st", "--alloc", "duo.st", cwd=tmp_path)
    assert twice.code == 1 and "--alloc" in twice.stderr and twice.stderr.count("\n") == 1


def test_every_policy_name_has_its_function():
    from headprof.allocation.policies import POLICY_FUNCTIONS

    assert POLICIES == tuple(POLICY_FUNCTIONS)
