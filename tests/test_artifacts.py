"""Artifacts: round trips, refusal of another model's artifact, atomic writes, corrupt files, merging, interop."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from headprof import artifacts as A
from headprof.errors import HeadprofError
from headprof.interop import export_scores, import_scores
from headprof.models import ModelInfo, model_info

from helpers import PUBLISHED, REFERENCE

SMALL = ModelInfo("toy/model", n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8, max_context=512, fingerprint="abc")


def _scores(n: int = 5, seed: int = 0, model: ModelInfo = SMALL) -> A.ScoreArtifact:
    torch.manual_seed(seed)
    counted = torch.tensor([True, False, True, True, False][:n])
    per_probe = {m: torch.rand(n, model.n_layers, model.n_heads) for m in A.METHODS}
    meta = {
        "mode": "teacher",
        "methods": list(A.METHODS),
        "params": {},
        "probe_set_sha256": "p" * 8,
        "answers": [""] * n,
        "probe_indices": list(range(n)),
        "probe_set_size": n,
    }
    return A.ScoreArtifact(
        model,
        [f"p{i}" for i in range(n)],
        ["retrieval", "reasoning"] * (n // 2) + ["retrieval"],
        counted,
        per_probe,
        meta,
    )


def test_score_round_trip_and_means_over_counted_probes(tmp_path):
    art = _scores()
    A.save_scores(tmp_path / "s.safetensors", art)
    back = A.load_scores(tmp_path / "s.safetensors")
    assert back.model == art.model and back.probe_ids == art.probe_ids
    for method in A.METHODS:
        torch.testing.assert_close(back.per_probe[method], art.per_probe[method])
        torch.testing.assert_close(back.scores(method), art.per_probe[method][[0, 2, 3]].mean(0))
    assert back.counts() == {
        "retrieval": {"total": 3, "right": 2, "counted": 2},
        "reasoning": {"total": 2, "right": 1, "counted": 1},
    }
    assert back.groups == art.groups and torch.equal(back.right, art.right)
    from safetensors.torch import load_file

    raw = load_file(str(tmp_path / "s.safetensors"))
    assert raw["r2"].dtype == torch.float32 and raw["r2"].shape == (3, 4)  # plain tensors for other tools


def test_alloc_round_trip(tmp_path):
    budgets = torch.full((3, 2), 64, dtype=torch.int32)
    A.save_alloc(tmp_path / "a.safetensors", A.AllocArtifact(SMALL, budgets, {"gqa": "kv", "policy": "uniform"}))
    back = A.load_alloc(tmp_path / "a.safetensors")
    assert back.gqa == "kv" and back.meta["total"] == 384 and torch.equal(back.budgets, budgets)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_layers": 4}, "was made for toy/model"),
        ({"head_dim": 16}, "was made for toy/model"),
        ({"fingerprint": "zzz"}, "weights abc"),
        ({"model_id": "other/model", "fingerprint": ""}, "was made for toy/model, not other/model"),
    ],
)
def test_refuses_another_models_artifact(change, message):
    with pytest.raises(HeadprofError, match=message):
        A.check_model(SMALL, dataclasses.replace(SMALL, **change))
    A.check_model(SMALL, dataclasses.replace(SMALL, model_id="renamed"))  # same weights, other name: fine


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "s.safetensors"
    A.save_scores(target, _scores(seed=1))
    before = target.read_bytes()

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(A, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        A.save_scores(target, _scores(seed=2))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_corrupt_and_foreign_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(HeadprofError, match="corrupt or not a safetensors file"):
        A.load_scores(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(HeadprofError, match="no headprof metadata"):
        A.load_scores(tmp_path / "plain.safetensors")
    A.save_alloc(tmp_path / "a.safetensors", A.AllocArtifact(SMALL, torch.full((3, 4), 64), {}))
    with pytest.raises(HeadprofError, match="expected headprof.scores"):
        A.load_scores(tmp_path / "a.safetensors")
    with pytest.raises(HeadprofError, match="not found"):
        A.load_scores(tmp_path / "missing.safetensors")


def test_merge_checks_and_equals_the_whole(tmp_path):
    whole = _scores()
    parts = [whole.subset([0, 2, 4]), whole.subset([1, 3])]
    for part, shard in zip(parts, ("0/2", "1/2")):
        part.meta["probe_indices"] = [i for i in range(5) if i % 2 == int(shard[0])]
        part.meta["shard"] = shard
    merged = A.merge_scores(parts)
    assert merged.probe_ids == whole.probe_ids
    for method in A.METHODS:
        assert torch.equal(merged.per_probe[method], whole.per_probe[method])
    with pytest.raises(HeadprofError, match="incomplete"):
        A.merge_scores(parts[:1])
    with pytest.raises(HeadprofError, match="overlap"):
        A.merge_scores([parts[0], parts[0]])
    other = whole.subset([1, 3])
    other.meta.update(probe_indices=[1, 3], mode="generate")
    with pytest.raises(HeadprofError, match="differ in mode"):
        A.merge_scores([parts[0], other])


@pytest.mark.parametrize(
    "name, model, method",
    [
        ("headkv-Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.means.json", "llama3-8b", "r2"),
        ("retrieval-head-Mistral-7B-v0.2-hf.means.json", "mistral-7b", "retrieval"),
    ],
)
def test_import_export_round_trip_is_exact(tmp_path, name, model, method):
    path = PUBLISHED / name
    first = import_scores(path, model_info(model), method)
    published = json.loads(path.read_text())
    expected = torch.tensor([published[f"{layer}-{head}"][0] for layer in range(32) for head in range(32)]).view(32, 32)
    torch.testing.assert_close(first.scores(method), expected)
    export_scores(first, tmp_path / "out.json", method)
    second = import_scores(tmp_path / "out.json", model_info(model))  # the kind from export's record
    assert second.methods == [method] and torch.equal(first.per_probe[method], second.per_probe[method])
    A.save_scores(tmp_path / "s.safetensors", second)
    assert torch.equal(A.load_scores(tmp_path / "s.safetensors").scores(method), second.scores(method))


def test_import_refuses_wrong_shape(tmp_path):
    (tmp_path / "big.json").write_text(json.dumps({"40-0": [1.0], "0-0": [0.5]}))
    with pytest.raises(HeadprofError, match="outside"):
        import_scores(tmp_path / "big.json", model_info("llama3-8b"), "r2")
    (tmp_path / "ragged.json").write_text(json.dumps({"0-0": [1.0], "0-1": [0.5, 0.2]}))
    with pytest.raises(HeadprofError, match="one length"):
        import_scores(tmp_path / "ragged.json", model_info("llama3-8b"), "r2")


def test_a_reasoning_needle_counts_only_when_both_polarities_are_right():
    right = torch.tensor([True, True, True, False, True, True])
    kinds = ["reasoning"] * 4 + ["retrieval", "reasoning"]
    groups = ["g1", "g1", "g2", "g2", "r", "g3"]
    positions = ["1024@50"] * 6
    counted = A.polarity_counted(right, kinds, groups, positions)
    assert counted.tolist() == [True, True, False, False, True, True]  # g2's other polarity was wrong
    # the same needle at another position is judged on its own
    counted = A.polarity_counted(right, kinds, groups, ["1024@10", "1024@10", "1024@10", "1024@90", "x", "y"])
    assert counted.tolist() == [True, True, True, False, True, True]


def test_merged_shards_apply_the_polarity_rule_across_shards():
    art = _scores()
    art = A.ScoreArtifact(
        art.model,
        ["q-a-older@1024@50", "q-a-younger@1024@50", "r@1024@50", "q-b-older@1024@50", "q-b-younger@1024@50"],
        ["reasoning", "reasoning", "retrieval", "reasoning", "reasoning"],
        torch.ones(5, dtype=torch.bool),
        art.per_probe,
        art.meta,
        ["a", "a", "r", "b", "b"],
        torch.tensor([True, False, True, True, True]),
    )
    parts = []
    for half in ([0, 2, 4], [1, 3]):
        part = art.subset(half)
        part.meta["probe_indices"] = half
        part.meta["answers"] = [""] * len(half)
        parts.append(part)
    merged = A.merge_scores(parts)
    assert merged.counted.tolist() == [False, False, True, True, True]


def test_export_import_round_trip_keeps_the_score_kind_and_import_never_guesses(cli, tmp_path):
    """`export` records the kind beside the JSON (whose keys stay heads only, as the reference loaders need);
    `import` reads it back, and with no record and no --method it refuses instead of guessing from the name."""
    exported = cli(
        "export", REFERENCE / "scores.safetensors", "--method", "retrieval", "--out", "r2.json", cwd=tmp_path
    )
    assert exported.code == 0, exported.stderr
    assert all(re.fullmatch(r"\d+-\d+", key) for key in json.loads((tmp_path / "r2.json").read_text()))
    back = cli("import", "r2.json", "--out", "back.safetensors", "--json")
    assert back.code == 0 and back.json()["method"] == "retrieval", back.stderr
    original, again = A.load_scores(REFERENCE / "scores.safetensors"), A.load_scores(tmp_path / "back.safetensors")
    torch.testing.assert_close(again.scores("retrieval"), original.scores("retrieval"))
    conflict = cli("import", "r2.json", "--method", "r2", "--out", "x.safetensors")
    assert conflict.code == 1 and "--method r2, but" in conflict.stderr and "records retrieval" in conflict.stderr
    (tmp_path / "r2.json.headprof.json").unlink()
    refused = cli("import", "r2.json", "--out", "x.safetensors")
    assert refused.code == 1 and "does not record which scores" in refused.stderr and "--method r2" in refused.stderr
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(HeadprofError, match="method='r2'"):
        import_scores(tmp_path / "r2.json", model_info("smollm2-135m"))
    assert cli("import", "r2.json", "--method", "r2", "--out", "x.safetensors").code == 0
