"""Score stability: re-scoring a sample of the committed probe set reproduces the committed references, in
teacher and in generate mode, through the drift gate users run in their own CI (`headprof check`).

A change to capture, scoring, answer generation or the model loading path that moves head scores fails
here. The thresholds are `check`'s defaults: per-probe rows equal to 1e-3, Spearman >= 0.99 and at least 9
of the top-10 heads shared on the sample's mean, and in generate mode every answer judged as before.
"""

from __future__ import annotations

import pytest

from headprof.artifacts import load_scores
from headprof.probes import DEFAULT_DEPTHS, DEFAULT_LENGTHS, build_probes, load_needles, load_probes, probes_sha256
from headprof.testing import assert_scores_stable

from helpers import NEEDLES, REFERENCE

pytestmark = pytest.mark.e2e
REFERENCES = {
    "teacher": REFERENCE / "scores.safetensors",
    "generate": REFERENCE / "scores-generate.safetensors",
}
PROBES = REFERENCE / "probes.jsonl"


def test_committed_probe_set_rebuilds_identically(tokenizer):
    needles = [n for k in ("retrieval", "reasoning") for n in load_needles(NEEDLES / f"needles-{k}.jsonl")]
    rebuilt = build_probes(
        needles, tokenizer, DEFAULT_LENGTHS, DEFAULT_DEPTHS, max_context=8192, tokenizer_name="smollm2-135m"
    )
    assert probes_sha256(rebuilt) == probes_sha256(load_probes(PROBES))


@pytest.mark.parametrize("mode, sample", [("teacher", 4), ("generate", 2)])
def test_rescoring_reproduces_the_reference(loaded, mode, sample):
    reference = load_scores(REFERENCES[mode])
    assert reference.meta["mode"] == mode and reference.meta["params"]["span"] == "reference"
    assert reference.model.fingerprint == loaded.info.fingerprint
    report = assert_scores_stable(REFERENCES[mode], model=loaded, probes=PROBES, sample=sample, mode=mode)
    assert len(report.probes) == sample and {"r2.rows", "retrieval.rows"} <= {c.name for c in report.cases}
