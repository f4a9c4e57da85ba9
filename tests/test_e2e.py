"""End to end on the embedded model: probes -> score -> allocate -> show, and resuming an interrupted run."""

from __future__ import annotations

import json

import pytest
import torch

from headprof import scoring
from headprof.artifacts import load_alloc, load_scores
from headprof.probes import write_probes

pytestmark = pytest.mark.e2e


def test_pipeline_through_the_cli(cli, workdir, loaded):
    built = cli("probes", "build", "--lengths", "400", "--depths", "20,80", "--limit", "1", "--json", cwd=workdir)
    assert built.code == 0, built.stderr
    info = built.json()
    assert info["count"] == 4 and info["per_kind"] == {"retrieval": 2, "reasoning": 2}
    assert info["probes"] == "headprof-out/smollm2-135m/probes.jsonl"  # the packaged needles, into the workspace

    scored = cli("score", "--json")
    assert scored.code == 0, scored.stderr
    report = scored.json()
    assert report["artifact"] == "headprof-out/smollm2-135m/scores.safetensors"
    assert "scoring smollm2-135m: 4/4 (100%)" in scored.stderr  # no terminal: plain progress lines
    assert report["probes_total"] == report["probes_counted"] == 4
    assert report["span"] == "reference"  # each score on its reference code's span, as the packaged reference
    assert len(report["top_heads"]) == 10 and report["top_heads"][0][2] >= report["top_heads"][-1][2] > 0
    art = load_scores(workdir / report["artifact"])
    assert art.model == loaded.info and set(art.methods) == {"retrieval", "r2"}
    assert not list((workdir / "headprof-out/smollm2-135m").glob("*.partial*"))

    alloc = cli("allocate", "--budget", "64", "--gqa", "query", "--json")
    assert alloc.code == 0, alloc.stderr
    result = alloc.json()
    assert result["total"] == 64 * 270 and result["min"] >= 32 and result["policy"] == "headkv"
    assert result["kv_bytes"] < result["kv_bytes_full"]
    budgets = load_alloc(workdir / result["artifact"])
    assert budgets.meta["source_scores_sha256"] == art.meta["sha256"]
    top_layer, top_head, _ = report["top_heads"][0]
    assert int(budgets.budgets[top_layer, top_head]) == int(budgets.budgets.max())

    kv = cli("allocate", "--budget", "64", "--policy", "pyramid", "--json")  # per KV head by default
    # KVCache-Factory's integer schedule: layer l keeps 63 - 2 l candidates + the window, in each of 3 KV heads
    assert kv.code == 0 and kv.json()["total"] == 3 * sum(63 - 2 * layer + 32 for layer in range(30))
    assert kv.json()["gqa"] == "kv"

    shown = cli("show", report["artifact"], "--png", "heat.png", "--json")
    assert shown.code == 0, shown.stderr
    view = shown.json()
    assert view["top_heads"][:3] == report["top_heads"][:3] and len(view["layers"]) == 30
    assert (workdir / "heat.png").read_bytes()[:4] == b"\x89PNG"
    table = cli("show")  # the workspace's scores by default
    assert table.code == 0 and "top 10 heads" in table.stdout and "heatmap" in table.stdout
    assert table.stdout.startswith(report["artifact"]) and not table.stderr
    assert cli("show", result["artifact"], "--json").json()["what"].startswith("budgets")


def test_interrupted_scoring_resumes_to_the_same_artifact(loaded, tiny_probes, tmp_path):
    config = scoring.ScoreConfig()
    whole = scoring.score_probes(loaded, tiny_probes, config)
    ckpt = tmp_path / "s.safetensors.partial"
    seen = []

    def stop_after_two(result):
        seen.append(result.probe_id)
        assert not ckpt.exists()  # within `checkpoint_every`: no rewrite after each probe
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scoring.score_probes(
            loaded, tiny_probes, config, checkpoint=ckpt, on_probe=stop_after_two, checkpoint_every=3600
        )
    assert load_scores(ckpt).probe_ids == [p.id for p in tiny_probes[:2]]  # written as the run stopped
    recomputed = []
    resumed = scoring.score_probes(
        loaded, tiny_probes, config, checkpoint=ckpt, on_probe=lambda r: recomputed.append(r.probe_id)
    )
    assert resumed.probe_ids == whole.probe_ids
    for method in config.methods:
        assert torch.equal(resumed.per_probe[method], whole.per_probe[method])
    assert torch.equal(resumed.counted, whole.counted)
    # a checkpoint from other parameters is ignored, not mixed in
    other = scoring.score_probes(loaded, tiny_probes[:1], scoring.ScoreConfig(methods=("r2",)), checkpoint=ckpt)
    assert other.methods == ["r2"]


def test_ctrl_c_in_the_cli_exits_cleanly_and_resumes(cli, workdir, tiny_probes, monkeypatch):
    write_probes(workdir / "p.jsonl", tiny_probes)
    real = scoring.score_probe
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "score_probe", flaky)
    first = cli("score", "--probes", "p.jsonl", "--out", "out/s.safetensors", cwd=workdir)
    assert first.code == 130 and "interrupted" in first.stderr and "Traceback" not in first.stderr
    assert not (workdir / "out/s.safetensors").exists() and (workdir / "out/s.safetensors.partial").exists()
    monkeypatch.setattr(scoring, "score_probe", real)
    second = cli("score", "--probes", "p.jsonl", "--out", "out/s.safetensors", "--json")
    assert second.code == 0 and second.json()["probes_total"] == 4
    assert not (workdir / "out/s.safetensors.partial").exists()
    assert json.loads(json.dumps(load_scores(workdir / "out/s.safetensors").probe_ids)) == [p.id for p in tiny_probes]
