"""Scaling out: torchrun ranks (gloo, CPU) and --shard i/N + merge give the single-process artifact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from headprof import workspace
from headprof.artifacts import load_scores
from headprof.errors import HeadprofError
from headprof.probes import write_probes
from headprof.score_job import ScoreJob

from helpers import PUBLISHED, REFERENCE, REPO

pytestmark = pytest.mark.e2e


def _same(a, b):
    assert a.probe_ids == b.probe_ids and torch.equal(a.counted, b.counted)
    for method in a.methods:
        torch.testing.assert_close(a.per_probe[method], b.per_probe[method], atol=1e-6, rtol=1e-6)


@pytest.fixture
def probe_file(workdir, tiny_probes):
    write_probes(workdir / "p.jsonl", tiny_probes)
    return workdir / "p.jsonl"


def test_shards_merge_to_the_unsharded_artifact(cli, workdir, probe_file):
    assert cli("score", "--probes", probe_file, "--out", "whole.safetensors", cwd=workdir).code == 0
    for i in range(2):
        result = cli("score", "--probes", probe_file, "--shard", f"{i}/2", "--out", f"part-{i}.safetensors")
        assert result.code == 0, result.stderr
    assert len(load_scores(workdir / "part-0.safetensors").probe_ids) == 2
    merged = cli("merge", "part-0.safetensors", "part-1.safetensors", "--out", "merged.safetensors", "--json")
    assert merged.code == 0 and merged.json()["probes"] == 4
    _same(load_scores(workdir / "merged.safetensors"), load_scores(workdir / "whole.safetensors"))
    missing = cli("merge", "part-0.safetensors", "--out", "bad.safetensors")
    assert missing.code == 1 and "incomplete" in missing.stderr and not (workdir / "bad.safetensors").exists()
    bad = cli("score", "--probes", probe_file, "--shard", "2/2")
    assert bad.code == 1 and "need 0 <= i < N" in bad.stderr


def test_torchrun_two_ranks_equal_one_process(cli, workdir, probe_file):
    assert cli("score", "--probes", probe_file, "--out", "single.safetensors", cwd=workdir).code == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "headprof",
            "score",
            "--probes",
            str(probe_file),
            "--out",
            "ranks.safetensors",
            "--json",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][0])
    assert report["probes_total"] == 4
    art = load_scores(workdir / "ranks.safetensors")
    assert art.meta["world_size"] == 2
    _same(art, load_scores(workdir / "single.safetensors"))


def test_import_allocate_export_round_trip_cli(cli, workdir):
    source = PUBLISHED / "headkv-Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.means.json"
    args = ("import", source, "--model", "llama3-8b", "--method", "r2", "--out", "llama.safetensors", "--json")
    imported = cli(*args, cwd=workdir)
    assert imported.code == 0, imported.stderr
    assert imported.json()["method"] == "r2"
    alloc = cli("allocate", "--scores", "llama.safetensors", "--budget", "128", "--json")
    assert alloc.code == 0 and alloc.json()["total"] == 128 * 32 * 8  # per KV head: 32 layers x 8 KV heads
    exported = cli("export", "llama.safetensors", "--format", "headkv-json", "--out", "again.json")
    assert exported.code == 0
    assert json.loads((workdir / "again.json").read_text()).keys() == json.loads(source.read_text()).keys()
    again = cli("import", "again.json", "--model", "llama3-8b", "--out", "again.safetensors")  # kind recorded
    assert again.code == 0
    first, second = load_scores(workdir / "llama.safetensors"), load_scores(workdir / "again.safetensors")
    assert torch.equal(first.per_probe["r2"], second.per_probe["r2"])  # ids name the source file; rows are exact
    compared = cli("compare", "llama.safetensors", "again.safetensors", "--json")
    assert compared.code == 0 and compared.json()["spearman"] == pytest.approx(1.0)
    wrong = cli("import", source, "--model", "smollm2-135m", "--method", "r2", "--out", "x.safetensors")
    assert wrong.code == 1 and "outside" in wrong.stderr
    mismatch = cli("compare", "llama.safetensors", REFERENCE / "scores.safetensors")
    assert mismatch.code == 1 and "different architectures" in mismatch.stderr


def test_a_score_job_plans_its_shard_and_output_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADPROF_WORKDIR", str(tmp_path))
    job = ScoreJob.plan("smollm2-135m", REFERENCE / "probes.jsonl", "generate", "1/3", None)
    assert job.wanted == list(range(1, len(job.probes), 3)) and job.shard_meta == {"shard": "1/3"}
    assert job.target == workspace.scores_file("smollm2-135m", "generate", "1/3")
    assert job.select == job.wanted  # one process: its rank scores the whole shard
    with pytest.raises(HeadprofError, match=r"no probe set at .*or give `probes` FILE"):
        ScoreJob.plan("smollm2-135m", None, "teacher", None, None)
