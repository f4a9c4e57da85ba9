"""Allocation invariants on synthetic scores and on the published Llama-3-8B / Mistral-7B head scores."""

from __future__ import annotations

import pytest
import torch

from headprof.allocation import AllocConfig, allocate, floor_of, headkv, largest_remainder, pyramid
from headprof.errors import HeadprofError
from headprof.interop import import_scores
from headprof.models import model_info

from helpers import PUBLISHED


def test_headkv_matches_the_formula_by_hand():
    # L=2, H=2, B=40, w=32 -> N=8; beta=2 -> M=4, pool = M*L*H = 16; S = [1, 0, 0, 0]
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    budgets = headkv(scores, AllocConfig(40, "headkv", window=32, beta=2))
    assert budgets.tolist() == [[52, 36], [36, 36]]


def test_largest_remainder_conserves_total_and_breaks_ties_by_index():
    raw = torch.tensor([1.5, 1.5, 1.5, 1.5])
    assert largest_remainder(raw, 8).tolist() == [2, 2, 2, 2]
    assert largest_remainder(raw, 6).tolist() == [2, 2, 1, 1]
    raw = torch.rand(7, 5) * 100
    assert int(largest_remainder(raw, int(raw.sum().round()) + 0).sum()) == int(raw.sum().round())
    raw = torch.tensor([0.2, 0.9, 0.4])
    assert largest_remainder(raw, 2).tolist() == [0, 1, 1]


@pytest.mark.parametrize("policy", ["headkv", "uniform", "pyramid"])
@pytest.mark.parametrize("gqa", ["query", "kv"])
@pytest.mark.parametrize("budget, beta", [(64, None), (128, 1.005), (256, 5.0), (1024, 1.2)])
def test_total_conserved_and_floors_respected(policy, gqa, budget, beta):
    torch.manual_seed(budget)
    scores = torch.rand(30, 9) ** 3
    config = AllocConfig(budget, policy, window=32, beta=beta, gqa=gqa)
    budgets = allocate(scores, config, n_kv_heads=3)
    n_heads = 9 if gqa == "query" else 3
    assert budgets.shape == (30, n_heads)
    if policy == "pyramid":  # KVCache-Factory's integer step spends up to L (L - 1) / 2 more per head index
        assert 0 <= int(budgets.sum()) - budget * budgets.numel() <= n_heads * 30 * 29 // 2
    else:
        assert int(budgets.sum()) == budget * budgets.numel()
    assert int(budgets.min()) >= floor_of(config, 30) >= 32


def test_headkv_is_monotone_in_score():
    torch.manual_seed(1)
    scores = torch.rand(12, 8)
    budgets = headkv(scores, AllocConfig(128, "headkv", beta=1.5))
    flat_s, flat_b = scores.flatten(), budgets.flatten()
    order = flat_s.argsort()
    assert bool((flat_b[order].diff() >= 0).all())
    assert int(flat_b[flat_s.argmax()]) > int(flat_b[flat_s.argmin()])


def test_headkv_temperature_sharpens_the_allocation():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    flat = headkv(scores, AllocConfig(128, "headkv", beta=2, temp=1.0))
    sharp = headkv(scores, AllocConfig(128, "headkv", beta=2, temp=3.0))
    assert int(sharp.max()) > int(flat.max()) and int(sharp.min()) < int(flat.min())


def test_pyramid_shape():
    budgets = pyramid((32, 4), AllocConfig(128, "pyramid", window=32))
    per_layer = budgets[:, 0]
    assert bool((budgets == per_layer[:, None]).all())  # every head of a layer is equal
    # KVCache-Factory: B' = 96, min = 96 // 20 = 4, max = 2 B' - min = 188, step (188 - 4) // 31 = 5
    assert per_layer.tolist() == [188 - 5 * layer + 32 for layer in range(32)]


def test_pyramid_on_a_single_layer_is_uniform():
    assert pyramid((1, 4), AllocConfig(64, "pyramid")).tolist() == [[64, 64, 64, 64]]


@pytest.mark.parametrize(
    "config, message",
    [
        (AllocConfig(32, "headkv", window=32), "must be larger than the window"),
        (AllocConfig(20, "headkv", window=32), "must be larger than the window"),
        (AllocConfig(128, "snapkv"), "unknown policy"),
        (AllocConfig(128, "headkv", beta=0.5), "beta must be >= 1"),
        (AllocConfig(128, "headkv", gqa="group"), "unknown gqa layout"),
    ],
)
def test_bad_configs(config, message):
    with pytest.raises(HeadprofError, match=message):
        allocate(torch.rand(4, 4), config, n_kv_heads=2)


def test_budget_larger_than_any_context():
    with pytest.raises(HeadprofError, match="larger than any context"):
        AllocConfig(10_000, "headkv").validate(max_context=8192)


@pytest.mark.parametrize(
    "name, model, method",
    [
        ("headkv-Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.means.json", "llama3-8b", "r2"),
        ("headkv-Meta-Llama-3-8B-Instruct_retrieval_heads.means.json", "llama3-8b", "retrieval"),
        ("retrieval-head-Mistral-7B-v0.2-hf.means.json", "mistral-7b", "retrieval"),
    ],
)
def test_published_scores_allocate(name, model, method):
    path = PUBLISHED / name
    art = import_scores(path, model_info(model), method)
    scores = art.scores(method)
    assert scores.shape == (32, 32)
    for gqa in ("query", "kv"):
        config = AllocConfig(128, "headkv", gqa=gqa)
        budgets = allocate(scores, config, n_kv_heads=8)
        assert int(budgets.sum()) == 128 * budgets.numel()
        assert int(budgets.min()) >= floor_of(config, 32)
    budgets = allocate(scores, AllocConfig(128, "headkv"), n_kv_heads=8)
    top = scores.flatten().topk(10).indices
    assert bool((budgets.flatten()[top] > 128).all())  # the strongest retrieval heads gain budget
    top_tenth = scores.flatten().argsort(descending=True)[: scores.numel() // 10]
    assert float(budgets.flatten()[top_tenth].sum()) > 0.35 * float(
        budgets.sum()
    )  # budget follows the few strong heads
