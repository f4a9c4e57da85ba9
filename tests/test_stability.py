"""Score stability: re-scoring a fixed subset must reproduce the committed reference artifact.

A change to capture, scoring or the model loading path that shifts head scores fails here. The
thresholds: per-probe r2 rows equal to 1e-3; on the subset mean, Spearman >= 0.99 for r2 and
>= 0.95 for retrieval (many tied zeros), and at least 9 of the top-10 r2 heads shared.
"""

from __future__ import annotations

import pytest
import torch

from headprof.artifacts import load_scores
from headprof.heads import rank_agreement
from headprof.probes import build_probes, load_needles, load_probes, probes_sha256
from headprof.scoring import ScoreConfig, score_probes

from helpers import NEEDLES, REFERENCE

pytestmark = pytest.mark.e2e
SCORES = REFERENCE / "scores.safetensors"
PROBES = REFERENCE / "probes.jsonl"
SUBSET = [
    "r-orion-vault-code@1024@50",
    "r-quenby-new-city@1024@10",
    "r-vexmoor-archive-password@1024@90",
    "q-mira-tomas-younger@1024@50",
    "q-ansel-bettina-taller@1024@10",
    "q-wexford-larchmere-founded@1024@90",
]


def test_committed_probe_set_rebuilds_identically(tokenizer):
    needles = [n for k in ("retrieval", "reasoning") for n in load_needles(NEEDLES / f"needles-{k}.jsonl")]
    rebuilt = build_probes(needles, tokenizer, max_context=8192, tokenizer_name="smollm2-135m")
    assert probes_sha256(rebuilt) == probes_sha256(load_probes(PROBES))


def test_rescoring_reproduces_the_reference(loaded):
    reference = load_scores(SCORES)
    assert reference.meta["probe_set_sha256"] == probes_sha256(load_probes(PROBES))
    assert reference.model.fingerprint == loaded.info.fingerprint
    probes = load_probes(PROBES)
    index = {p.id: i for i, p in enumerate(probes)}
    fresh = score_probes(loaded, probes, ScoreConfig(mode=reference.meta["mode"]), select=[index[i] for i in SUBSET])
    ref_rows = {
        m: reference.per_probe[m][[reference.probe_ids.index(i) for i in fresh.probe_ids]] for m in reference.methods
    }
    torch.testing.assert_close(fresh.per_probe["r2"], ref_rows["r2"], atol=1e-3, rtol=1e-3)
    r2 = rank_agreement(fresh.scores("r2"), ref_rows["r2"].mean(0))
    assert r2["spearman"] >= 0.99 and r2["top10_overlap"] >= 0.9, r2
    retrieval = rank_agreement(fresh.scores("retrieval"), ref_rows["retrieval"].mean(0))
    assert retrieval["spearman"] >= 0.95, retrieval
