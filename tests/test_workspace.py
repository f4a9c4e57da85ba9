"""Where files go: packaged inputs, the workspace (`--workdir`, `$HEADPROF_WORKDIR`, `./headprof-out`), fallbacks."""

from __future__ import annotations

import pytest

from headprof import workspace
from headprof.artifacts import load_alloc, load_scores

from helpers import REFERENCE


def test_packaged_files_are_found_through_the_package():
    assert workspace.needle_file("retrieval").is_file() and workspace.eval_needle_file("reasoning").is_file()
    assert workspace.reference_file("smollm2-135m", "scores.safetensors").samefile(REFERENCE / "scores.safetensors")
    assert workspace.is_packaged(workspace.needle_file("retrieval"))
    assert not workspace.is_packaged(workspace.scores_file("smollm2-135m"))


def test_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(workspace.ROOT_ENV, raising=False)
    assert workspace.probe_file("smollm2-135m").as_posix() == "headprof-out/smollm2-135m/probes.jsonl"
    monkeypatch.setenv(workspace.ROOT_ENV, str(tmp_path / "env"))
    assert (
        workspace.scores_file("smollm2-135m", "generate") == tmp_path / "env/smollm2-135m/scores-generate.safetensors"
    )
    workspace.set_root(tmp_path / "flag")
    try:
        assert workspace.eval_cache_file("smollm2-135m") == tmp_path / "flag/smollm2-135m/eval-cache.jsonl"
    finally:
        workspace.set_root(None)


def test_inputs_fall_back_to_the_packaged_reference(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    scores = workspace.scores_file("smollm2-135m")
    assert workspace.find_input("smollm2-135m", scores) == workspace.Input(
        workspace.reference_file("smollm2-135m", "scores.safetensors"), True
    )
    scores.parent.mkdir(parents=True)
    scores.write_bytes(b"")
    assert workspace.find_input("smollm2-135m", scores) == workspace.Input(scores, False)
    missing = workspace.scores_file("smollm2-135m", "imported-r2")
    assert workspace.find_input("smollm2-135m", missing) == workspace.Input(missing, False)


def test_allocate_from_an_empty_folder_uses_the_reference_and_writes_to_the_workspace(cli, tmp_path, monkeypatch):
    monkeypatch.delenv(workspace.ROOT_ENV, raising=False)
    first = cli("allocate", "--budget", "64", "--json", cwd=tmp_path)
    assert first.code == 0, first.stderr
    assert first.json()["artifact"] == "headprof-out/smollm2-135m/alloc-b64-headkv.safetensors"
    notice = first.stderr.strip()
    assert notice.startswith("notice: no headprof-out/smollm2-135m/scores.safetensors in the workspace: using the")
    assert len(notice.splitlines()) == 1 and str(REFERENCE / "scores.safetensors") in notice
    alloc = load_alloc(tmp_path / first.json()["artifact"])
    assert alloc.meta["source_scores_sha256"] == load_scores(REFERENCE / "scores.safetensors").meta["sha256"]

    flagged = cli("--workdir", "mine", "allocate", "--budget", "64", "--policy", "uniform", "--json")
    assert flagged.json()["artifact"] == "mine/smollm2-135m/alloc-b64-uniform.safetensors"
    monkeypatch.setenv(workspace.ROOT_ENV, "from-env")
    by_env = cli("allocate", "--budget", "64", "--policy", "pyramid", "--json")
    assert by_env.json()["artifact"] == "from-env/smollm2-135m/alloc-b64-pyramid.safetensors"
    both = cli("--workdir", "mine", "allocate", "--budget", "80", "--json")
    assert both.json()["artifact"] == "mine/smollm2-135m/alloc-b80-headkv.safetensors"  # the flag wins
    assert (tmp_path / "from-env/smollm2-135m/alloc-b64-pyramid.safetensors").is_file()
    assert not list(workspace.data_dir().rglob("alloc-*"))  # never into the package

    shown = cli("show", "--json")  # no scores in this workspace: the packaged ones, said once
    assert shown.code == 0 and shown.json()["model"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert shown.stderr.count("notice:") == 1 and "packaged reference scores" in shown.stderr


@pytest.mark.e2e
def test_eval_and_ablate_default_to_the_packaged_evaluation_set(cli, tmp_path):
    # an unavailable device fails after the inputs are resolved and before any model loads
    result = cli("eval", "--methods", "snapkv", "--budgets", "64", "--device", "cuda:7", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.code == 1 and lines[-1].startswith("error: device 'cuda:7'"), result.stderr
    assert "packaged reference evaluation probes" in lines[0] and "packaged reference scores" in lines[1]
    result = cli("ablate", "--device", "cuda:7")
    assert result.code == 1 and "packaged reference evaluation probes" in result.stderr
    result = cli("--workdir", "elsewhere", "eval", "--model", "llama3-8b", "--methods", "snapkv")
    assert (
        result.code == 1 and "no evaluation probes at elsewhere/meta-llama--meta-llama-3-8b-instruct/" in result.stderr
    )


def test_score_without_probes_says_how_to_build_them(cli, tmp_path):
    result = cli("score", cwd=tmp_path)
    assert result.code == 1
    assert result.stderr.strip() == (
        "error: no probe set at headprof-out/smollm2-135m/probes.jsonl: run `headprof probes build` first, "
        "or give --probes FILE"
    )
