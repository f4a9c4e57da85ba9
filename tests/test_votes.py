"""`votes`: a voting span longer than the kept window (issue 25's B=32 lever), from the math to an artifact's press."""

from __future__ import annotations

import pytest
import torch

from headprof.allocation import AllocConfig, allocate_artifact
from headprof.artifacts import load_scores
from headprof.errors import HeadprofError
from headprof.runtime import BudgetSource, build_press
from headprof.runtime.selection import window_votes

from helpers import REFERENCE

SCORES = REFERENCE / "scores.safetensors"


def _oracle_votes(query, key, scaling, window, voters):
    """Written from SnapKV's definition, one query row at a time: each of the last `voters` queries attends
    causally over the keys up to itself; its softmax over the first T - window keys is averaged over the rows."""
    total = key.shape[2]
    group = query.shape[1] // key.shape[1]
    rows = []
    for position in range(total - voters, total):
        logits = torch.einsum("bhd,bhtd->bht", query[:, :, position], key.repeat_interleave(group, 1)) * scaling
        logits[..., position + 1 :] = float("-inf")
        rows.append(torch.softmax(logits.float(), dim=-1)[..., : total - window])
    return torch.stack(rows, dim=2).mean(dim=2)


def test_votes_span_the_last_queries_causally():
    torch.manual_seed(0)
    query, key = torch.randn(1, 4, 12, 8), torch.randn(1, 2, 12, 8)
    for voters in (6, 12):
        got = window_votes(query, key, 8**-0.5, 3, "mean", voters)
        assert torch.allclose(got, _oracle_votes(query, key, 8**-0.5, 3, voters), atol=1e-6)
    # 0 (the default): the window's own queries, as every reference
    same = window_votes(query, key, 8**-0.5, 3, "mean", 0)
    assert torch.equal(same, window_votes(query, key, 8**-0.5, 3, "mean", 3))
    assert not torch.allclose(same, window_votes(query, key, 8**-0.5, 3, "mean", 6))


@pytest.mark.parametrize(("votes", "window"), [(-1, 8), (8, 8), (4, 8)])
def test_votes_must_exceed_the_window(votes, window):
    with pytest.raises(HeadprofError, match="votes must be 0 or above the window"):
        AllocConfig(32, "headkv", window, votes=votes).validate()


def test_an_artifact_carries_its_votes_to_the_press(loaded):
    scores = load_scores(SCORES)
    plain = allocate_artifact(scores, AllocConfig(32, "headkv", 8, gqa="kv"), "r2", SCORES)
    voted = allocate_artifact(scores, AllocConfig(32, "headkv", 8, gqa="kv", votes=32), "r2", SCORES)
    assert "votes" not in plain.meta and voted.meta["votes"] == 32  # the references' artifacts stay as they were
    assert torch.equal(plain.budgets, voted.budgets)  # votes change what is kept, not how much
    assert build_press(loaded.model, "headkv", BudgetSource(allocation=plain)).method.options.votes == 0
    assert build_press(loaded.model, "headkv", BudgetSource(allocation=voted)).method.options.votes == 32
    own = build_press(loaded.model, "headkv", BudgetSource(allocation=voted), options={"votes": 16})
    assert own.method.options.votes == 16  # the method's own option wins
    with pytest.raises(HeadprofError, match="made for votes=32, which h2o does not take"):
        build_press(loaded.model, "h2o", BudgetSource(allocation=voted))


def test_the_question_votes_what_a_short_window_keeps(loaded, tokenizer):
    """At B=32 with a window of 8 the window is the chat template's tail; votes from the last 32 queries keep
    other entries than the window's own votes do, and the same bytes."""
    text = "The vault code is 4127. " + "Rain fell on the quiet town all day. " * 20 + "What is the vault code?"
    messages = [{"role": "user", "content": text}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    scores = load_scores(SCORES)
    caches = [
        build_press(
            loaded.model, "headkv", BudgetSource(allocation=allocate_artifact(scores, c, "r2", SCORES))
        ).prefill(ids)
        for c in (AllocConfig(32, "headkv", 8, gqa="kv"), AllocConfig(32, "headkv", 8, gqa="kv", votes=32))
    ]
    kept = [[p.tolist() for layer in range(30) for p in cache.kept_positions(layer)] for cache in caches]
    assert [len(p) for p in kept[0]] == [len(p) for p in kept[1]] and kept[0] != kept[1]
