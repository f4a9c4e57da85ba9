"""Test helpers for projects that depend on head scores: fail a pytest test when scores drift.

    from headprof.testing import assert_scores_stable

    def test_head_scores_did_not_drift():
        assert_scores_stable("artifacts/my-model/scores.safetensors", model="my-org/my-model", sample=4)

It re-scores a deterministic sample of the reference's probes with the model as it loads today (or the
`LoadedModel` you pass) and raises AssertionError naming the failed checks and the heads that moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from headprof.check import CheckConfig, CheckReport, check_scores, write_junit

if TYPE_CHECKING:
    from headprof.models.loading import LoadedModel
    from headprof.probes import Probe


def assert_scores_stable(
    reference: str | Path,
    model: str | LoadedModel = "smollm2-135m",
    probes: str | Path | Sequence[Probe] | None = None,
    sample: int = 6,
    mode: str | None = None,
    max_row_diff: float = 1e-3,
    min_spearman: float = 0.99,
    min_topk: float = 0.9,
    junit: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "auto",
) -> CheckReport:
    """Re-score `sample` of the reference's probes and assert that no check fails; returns the report.

    `model`: a `--model` name (loaded here) or a `LoadedModel`; `probes`: the probe set the reference was
    scored on (a file or probes; default: `probes.jsonl` beside the reference, else the model's probe set);
    `junit`: also write JUnit XML.
    """
    from headprof import workspace
    from headprof.models.loading import load_model
    from headprof.probes import load_probes

    loaded = load_model(model, dtype=dtype, device=device) if isinstance(model, str) else model
    if probes is None or isinstance(probes, str | Path):
        probes = load_probes(probes or workspace.reference_probes(Path(reference), loaded.spec.name))
    config = CheckConfig(sample, mode, max_row_diff, min_spearman, min_topk)
    report = check_scores(loaded, reference, list(probes), config)
    if junit:
        write_junit(report, junit)
    if not report.passed:
        failed = "; ".join(case.message for case in report.cases if not case.passed)
        moved = ", ".join(
            f"{m['score']} L{m['layer']}H{m['head']} {m['reference']:.4f}->{m['fresh']:.4f}" for m in report.moved[:5]
        )
        raise AssertionError(f"head scores drifted from {reference}: {failed}; most moved: {moved}")
    return report
