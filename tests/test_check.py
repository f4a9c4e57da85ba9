"""`headprof check`: the drift gate passes on the unchanged model, fails on a perturbed one, writes JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from contextlib import contextmanager

import pytest
import torch

from headprof.artifacts import load_scores, save_scores
from headprof.check import CheckCase, CheckConfig, CheckReport, check_scores, junit_xml, sample_indices
from headprof.errors import HeadprofError
from headprof.probes import write_probes
from headprof.scoring import ScoreConfig, score_probes
from headprof.workspace import reference_probes

from helpers import REFERENCE


@contextmanager
def attention_scaled(loaded, layer: int = 12, factor: float = 2.0):
    """One layer's attention output scaled in memory (a power of two: restoring it is exact)."""
    weight = loaded.model.model.layers[layer].self_attn.o_proj.weight
    with torch.no_grad():
        weight.mul_(factor)
    try:
        yield
    finally:
        with torch.no_grad():
            weight.div_(factor)


@pytest.fixture(scope="module")
def references(loaded, tiny_probes, tmp_path_factory):
    """Teacher references of one retrieval and one reasoning probe: from the model, and from a perturbed model."""
    folder = tmp_path_factory.mktemp("check")
    write_probes(folder / "p.jsonl", tiny_probes)
    good = score_probes(loaded, tiny_probes, ScoreConfig(), select=[0, 2])
    save_scores(folder / "good.safetensors", good)
    with attention_scaled(loaded):
        save_scores(folder / "drifted.safetensors", score_probes(loaded, tiny_probes, ScoreConfig(), select=[0, 2]))
    return folder


def test_sample_is_deterministic_and_spread_over_kinds():
    reference = load_scores(REFERENCE / "scores.safetensors")
    picked = sample_indices(reference, 6)
    assert picked == sample_indices(reference, 6) and len(picked) == 6
    assert sorted(reference.probe_kinds[i] for i in picked) == ["reasoning"] * 3 + ["retrieval"] * 3


def test_default_probes_are_the_ones_beside_the_reference(tmp_path, monkeypatch):
    assert reference_probes(REFERENCE / "scores.safetensors", "smollm2-135m") == REFERENCE / "probes.jsonl"
    monkeypatch.setenv("HEADPROF_WORKDIR", str(tmp_path / "ws"))
    # nothing beside it, no workspace probe set: the model's packaged probe set
    assert reference_probes(tmp_path / "mine.safetensors", "smollm2-135m") == REFERENCE / "probes.jsonl"
    (tmp_path / "probes.jsonl").write_text("{}\n")
    assert reference_probes(tmp_path / "mine.safetensors", "smollm2-135m") == tmp_path / "probes.jsonl"


def test_junit_xml_has_the_schema_ci_reads():
    cases = [
        CheckCase("r2.rows", True, 0.0, 1e-3, "largest change 0"),
        CheckCase("r2.spearman", False, 0.5, 0.99, "Spearman 0.5 (limit 0.99)"),
    ]
    moved = [
        {"score": "r2", "layer": 3, "head": 1, "reference": 0.5, "fresh": 0.1, "diff": -0.4, "rank_reference": 1}
        | {"rank_fresh": 40}
    ]
    report = CheckReport("ref.safetensors", "m", "teacher", ["a@1@50"], cases, moved, 1.5)
    root = ET.fromstring(junit_xml(report))
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "1"
    (suite,) = root.findall("testsuite")
    assert {"name", "tests", "failures", "errors", "skipped", "time", "timestamp", "hostname"} <= set(suite.attrib)
    assert [child.tag for child in suite] == ["properties", "testcase", "testcase", "system-out"]
    passed, failed = suite.findall("testcase")
    assert passed.find("failure") is None and passed.get("classname") == "headprof.check.r2"
    failure = failed.find("failure")
    assert failure.get("type") == "ScoreDrift" and "L3H1" in failure.text and "rank 1 -> 40" in failure.text


def test_check_fails_on_a_perturbed_model_and_passes_on_the_unchanged_one(loaded, tiny_probes, references):
    good = references / "good.safetensors"
    stable = check_scores(loaded, good, tiny_probes, CheckConfig(sample=2))
    assert stable.passed and stable.moved == []  # nothing moved, nothing listed
    with attention_scaled(loaded):
        report = check_scores(loaded, good, tiny_probes, CheckConfig(sample=2))
    assert not report.passed
    failed = {case.name for case in report.cases if not case.passed}
    assert {"r2.rows", "retrieval.rows"} <= failed
    assert report.moved and abs(report.moved[0]["diff"]) > 1e-3 and all(m["diff"] != 0 for m in report.moved)
    with pytest.raises(HeadprofError, match="scored in teacher mode, not generate"):
        check_scores(loaded, good, tiny_probes, CheckConfig(mode="generate"))
    with pytest.raises(HeadprofError, match="not the probe set"):
        check_scores(loaded, good, tiny_probes[:3], CheckConfig())


def test_check_cli_exit_codes_and_junit(cli, references):
    passed = cli(
        "check", "good.safetensors", "--probes", "p.jsonl", "--sample", "2", "--junit", "ok.xml", cwd=references
    )
    assert passed.code == 0, passed.stderr
    assert passed.stdout.strip().splitlines()[-1].startswith("scores stable (")  # styled, never markup text
    assert ET.parse(references / "ok.xml").getroot().get("failures") == "0"
    drifted = cli("check", "drifted.safetensors", "--probes", "p.jsonl", "--junit", "drift.xml", "--json")
    assert drifted.code == 1, drifted.stderr
    payload = drifted.json()
    assert payload["passed"] is False and payload["moved"]
    root = ET.parse(references / "drift.xml").getroot()
    assert int(root.get("failures")) >= 2 and root.find("testsuite/testcase/failure") is not None
    assert cli("check", "good.safetensors", "--probes", "p.jsonl", "--sample", "many").code == 2
    bad = cli("check", "good.safetensors", "--probes", "p.jsonl", "--mode", "generate")
    assert bad.code == 1 and bad.stderr.startswith("error:") and "teacher mode" in bad.stderr
