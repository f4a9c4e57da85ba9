"""`tune`: the candidate grid at equal bytes, needle-clustered intervals, split checks, and one tiny run."""

from __future__ import annotations

import json

import pytest

from headprof import tune as T
from headprof.allocation import AllocConfig, allocate_artifact
from headprof.artifacts import load_alloc, load_scores
from headprof.errors import HeadprofError
from headprof.needlegen import build_eval_probes
from headprof.probes import write_probes

from helpers import REFERENCE

SCORES = REFERENCE / "scores.safetensors"


@pytest.mark.parametrize("budget", [32, 64, 128])
def test_grid_starts_with_published_headkv_and_spends_uniform_bytes(budget):
    candidates = T.grid(budget)
    labels = [T.label(c) for c in candidates]
    assert labels[0] == T.label(T.published(budget)) and len(set(labels)) == len(labels)
    assert {c.policy for c in candidates} == {"headkv", "duo", "headkv-floor", "mix"}
    scores = load_scores(SCORES)
    for config in candidates:
        budgets = allocate_artifact(scores, config, "r2", SCORES).budgets
        assert int(budgets.sum()) == budget * budgets.numel()
        assert config.window < budget or (config.policy == "duo" and 0 < config.stream < budget)


def test_clustered_interval_resamples_whole_needles():
    cluster_of = {"a@1": "a", "a@2": "a", "b@1": "b", "b@2": "b"}
    correct = {"a@1": 1, "a@2": 1, "b@1": 0, "b@2": 0}
    # two needles, all-or-none: a resample holds 0, 1 or 2 copies of the right one
    assert T.clustered_interval(correct, cluster_of) == (0.0, 1.0)
    assert T.clustered_interval(correct, cluster_of, baseline=correct) == (0.0, 0.0)
    same = {"a@1": 1, "a@2": 0, "b@1": 1, "b@2": 0}  # every needle half right: no needle-level spread
    assert T.clustered_interval(same, cluster_of) == (0.5, 0.5)


def test_splits_that_share_a_needle_are_refused(tokenizer):
    probes = build_eval_probes(tokenizer, "validation", count=1, lengths=(256,), depths=(50,))
    with pytest.raises(HeadprofError, match="share 1 needle"):
        T.check_splits(probes, probes)
    with pytest.raises(HeadprofError, match="at least 9"):
        T.TuneConfig((8,)).validate()


def test_tune_picks_on_validation_and_reports_on_test(cli, tmp_path, tokenizer):
    write_probes(
        tmp_path / "v.jsonl", build_eval_probes(tokenizer, "validation", count=1, lengths=(256,), depths=(50,))
    )
    write_probes(tmp_path / "t.jsonl", build_eval_probes(tokenizer, "test", count=1, lengths=(256,), depths=(50,)))
    args = ("tune", "--budgets", "16", "--validation", "v.jsonl", "--test", "t.jsonl", "--max-new-tokens", "4")
    result = cli(*args, "--scores", SCORES, "--out-dir", ".", "--json", cwd=tmp_path)
    assert result.code == 0, result.stderr
    block = json.loads(result.stdout)["budgets"]["16"]
    assert block["pick"] in {T.label(c) for c in T.grid(16)} and len(block["validation"]) == len(T.grid(16))
    names = [row["name"] for row in block["test"]]
    assert names[0] == "full" and names[1] == T.label(T.published(16)) and block["pick"] in names
    assert all(0 <= row["accuracy"] <= 1 and row["n"] == 1 for row in block["test"])
    art = load_alloc(tmp_path / "alloc-b16-tuned.safetensors")
    assert art.meta["tuned_on"]["file"].endswith("v.jsonl") and art.meta["tested_on"]["items"] == 1
    assert int(art.budgets.sum()) == 16 * art.budgets.numel() and art.meta["candidates"] == len(T.grid(16))
    assert T.label(AllocConfig(16, art.meta["policy"], art.meta["window"], **art.meta["parameters"])) == block["pick"]
    same = cli(
        "tune", "--validation", "v.jsonl", "--test", "v.jsonl", "--scores", SCORES, "--out-dir", "x", cwd=tmp_path
    )
    assert same.code == 1 and same.stderr.count("\n") == 1 and "share 1 needle" in same.stderr
    assert not (tmp_path / "x").exists()  # refused before anything was written
