"""A drift gate for head scores: re-score a deterministic sample of a reference artifact's probes with the
current model and code, and compare.

Scoring is deterministic on a given machine, so an unchanged model and code reproduce the reference's
per-probe rows to float precision; a changed checkpoint, dtype, attention path or scoring rule moves
them. The checks, each a JUnit test case:
- `<score>.rows`: the largest |fresh - reference| over the sampled probes' per-head rows <= max_row_diff;
- `<score>.spearman`: Spearman over all heads of the sample's mean rows >= min_spearman;
- `<score>.top<k>`: the overlap of the two means' top-k heads >= min_topk;
- `answers` (generate mode): every sampled probe is judged right or wrong as in the reference.
The report lists the heads that moved most (reference vs fresh value and rank). Library first: the CLI
(`headprof check`) and the pytest helper (`headprof.testing.assert_scores_stable`) call `check_scores`.
"""

from __future__ import annotations

import hashlib
import math
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from headprof.artifacts import ScoreArtifact, check_architecture, load_scores
from headprof.errors import HeadprofError
from headprof.fileio import write_text_atomic
from headprof.heads import rank_agreement, ranked_heads
from headprof.probes import Probe, probes_sha256

if TYPE_CHECKING:
    from headprof.models.loading import LoadedModel


@dataclass(frozen=True)
class CheckConfig:
    """How many probes to re-score and the tolerances; `mode` must be the reference's (None: take it)."""

    sample: int = 6
    mode: str | None = None
    max_row_diff: float = 1e-3
    min_spearman: float = 0.99
    min_topk: float = 0.9
    k: int = 10

    def validate(self) -> None:
        """Fail on bad input before any model is loaded."""
        if self.sample < 1:
            raise HeadprofError(f"`sample` must be at least 1, got {self.sample}")
        limits = (self.max_row_diff, self.min_spearman, self.min_topk)
        if not all(math.isfinite(x) for x in limits):
            raise HeadprofError("`max_row_diff`, `min_spearman` and `min_topk` must be finite numbers")
        if self.max_row_diff < 0 or not -1 <= self.min_spearman <= 1 or not 0 <= self.min_topk <= 1:
            raise HeadprofError("`max_row_diff` must be >= 0, `min_spearman` in [-1, 1], `min_topk` in [0, 1]")
        if self.k < 1:
            raise HeadprofError(f"top-k must be at least 1, got {self.k}")


@dataclass
class CheckCase:
    """One comparison: its value against its limit, and a one-line message."""

    name: str
    passed: bool
    value: float
    limit: float
    message: str


@dataclass
class CheckReport:
    """Everything `check` found: the cases, the heads that moved most, what was re-scored."""

    reference: str
    model: str
    mode: str
    probes: list[str]
    cases: list[CheckCase]
    moved: list[dict[str, Any]]
    seconds: float
    notices: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()))

    @property
    def passed(self) -> bool:
        """True when every case passed."""
        return all(case.passed for case in self.cases)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for `--json`."""
        return {**asdict(self), "passed": self.passed}


def sample_indices(reference: ScoreArtifact, n: int) -> list[int]:
    """A deterministic sample of the reference's probes (positions in the reference), spread over the kinds:
    each kind's probes in the order of a hash of their ids, right answers first, taken round-robin."""
    by_kind: dict[str, list[int]] = {}
    for i, kind in enumerate(reference.probe_kinds):
        by_kind.setdefault(kind, []).append(i)
    queues = [
        sorted(
            members,
            key=lambda i: (not bool(reference.right[i]), hashlib.sha256(reference.probe_ids[i].encode()).hexdigest()),
        )
        for _, members in sorted(by_kind.items())
    ]
    picked: list[int] = []
    while len(picked) < min(n, len(reference.probe_ids)):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return sorted(picked)


def _moved(ref: torch.Tensor, fresh: torch.Tensor, n_heads: int, limit: int = 10) -> list[dict[str, Any]]:
    """The heads whose sample-mean score changed most (unchanged heads are not listed), with both values and ranks."""
    flat_ref, flat_fresh = ref.flatten(), fresh.flatten()
    rank_ref = {h: r for r, h in enumerate(ranked_heads(ref), 1)}
    rank_fresh = {h: r for r, h in enumerate(ranked_heads(fresh), 1)}
    change = (flat_fresh - flat_ref).abs()
    order = [h for h in torch.argsort(change, descending=True, stable=True)[:limit].tolist() if change[h] > 0]
    return [
        {
            "layer": h // n_heads,
            "head": h % n_heads,
            "reference": round(float(flat_ref[h]), 6),
            "fresh": round(float(flat_fresh[h]), 6),
            "diff": round(float(flat_fresh[h] - flat_ref[h]), 6),
            "rank_reference": rank_ref[h],
            "rank_fresh": rank_fresh[h],
        }
        for h in order
    ]


def check_scores(
    loaded: LoadedModel,
    reference: ScoreArtifact | str | Path,
    probes: Sequence[Probe],
    config: CheckConfig = CheckConfig(),
    name: str | None = None,
) -> CheckReport:
    """Re-score `config.sample` of the reference's probes with `loaded` and compare (see the module doc).

    `reference`: an artifact or its path; `name` is how the report calls it (default: the path).
    """
    from headprof.scoring import ScoreConfig, score_probes

    config.validate()
    ref = reference if isinstance(reference, ScoreArtifact) else load_scores(reference)
    name = name or (str(reference) if not isinstance(reference, ScoreArtifact) else "the reference")
    mode = ref.meta.get("mode")
    if mode not in ("teacher", "generate"):
        raise HeadprofError(f"reference {name} was not scored by headprof on probes (mode '{mode}'); cannot re-score")
    if config.mode and config.mode != mode:
        raise HeadprofError(f"reference {name} was scored in {mode} mode, not {config.mode}")
    check_architecture(ref.model, loaded.info, "the reference and the model")
    notices = []
    if ref.model.fingerprint and loaded.info.fingerprint and ref.model.fingerprint != loaded.info.fingerprint:
        notices.append(f"weights differ from the reference's ({loaded.info.fingerprint} vs {ref.model.fingerprint})")
    if probes_sha256(probes) != ref.meta.get("probe_set_sha256"):
        raise HeadprofError(f"the probe file is not the probe set reference {name} was scored on (sha256 differs)")
    index = {p.id: i for i, p in enumerate(probes)}
    picked = sample_indices(ref, config.sample)
    params = ref.meta.get("params", {})
    score_config = ScoreConfig(
        tuple(ref.methods),
        mode,
        params.get("span", "reference"),
        params.get("criterion", "f1"),
        float(params.get("threshold", 0.5)),
    )
    started = time.time()
    fresh = score_probes(loaded, probes, score_config, select=[index[ref.probe_ids[i]] for i in picked])
    seconds = time.time() - started
    order = [fresh.probe_ids.index(ref.probe_ids[i]) for i in picked]
    cases, moved = [], []
    k = min(config.k, ref.model.n_layers * ref.model.n_heads)
    for method in ref.methods:
        ref_rows, new_rows = ref.per_probe[method][picked], fresh.per_probe[method][order]
        cases += _score_cases(method, ref_rows, new_rows, config, k)
        moved += [dict(row, score=method) for row in _moved(ref_rows.mean(0), new_rows.mean(0), ref.model.n_heads)]
    if mode == "generate":
        flipped = [ref.probe_ids[i] for i, j in zip(picked, order) if bool(ref.right[i]) != bool(fresh.right[j])]
        cases.append(
            CheckCase(
                "answers",
                not flipped,
                float(len(flipped)),
                0.0,
                f"{len(flipped)} of {len(picked)} sampled answers judged otherwise than in the reference"
                + (f": {', '.join(flipped)}" if flipped else ""),
            )
        )
    return CheckReport(
        name, loaded.info.model_id, mode, [ref.probe_ids[i] for i in picked], cases, moved, seconds, notices
    )


def _score_cases(
    method: str, ref_rows: torch.Tensor, new_rows: torch.Tensor, config: CheckConfig, k: int
) -> list[CheckCase]:
    """One score's three cases: the largest per-probe change, the Spearman of the sample means over all heads,
    and the share of the top-k heads kept."""
    diff = float((new_rows - ref_rows).abs().max())
    agreement = rank_agreement(new_rows.mean(0), ref_rows.mean(0), k)
    rho, overlap = agreement["spearman"], agreement[f"top{k}_overlap"]
    if math.isnan(rho):  # a constant mean (no answer step scored): equal or not
        rho = 1.0 if torch.equal(new_rows, ref_rows) else -1.0
    return [
        CheckCase(
            f"{method}.rows",
            diff <= config.max_row_diff,
            diff,
            config.max_row_diff,
            f"largest per-probe {method} change {diff:.3g} (limit {config.max_row_diff:g})",
        ),
        CheckCase(
            f"{method}.spearman",
            rho >= config.min_spearman,
            rho,
            config.min_spearman,
            f"Spearman of the sample's mean {method} over all heads {rho:.4f} (limit {config.min_spearman:g})",
        ),
        CheckCase(
            f"{method}.top{k}",
            overlap >= config.min_topk,
            overlap,
            config.min_topk,
            f"top-{k} {method} heads shared {overlap:.0%} (limit {config.min_topk:.0%})",
        ),
    ]


def junit_xml(report: CheckReport) -> str:
    """The report as JUnit XML (testsuites > testsuite > testcase, a `failure` per failed case), as CI reads it."""
    failures = sum(not case.passed for case in report.cases)
    seconds = f"{report.seconds:.3f}"
    each = f"{report.seconds / max(1, len(report.cases)):.3f}"
    suites = ET.Element(
        "testsuites", name="headprof check", tests=str(len(report.cases)), failures=str(failures), errors="0"
    )
    suites.set("time", seconds)
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="headprof.check",
        tests=str(len(report.cases)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=seconds,
        timestamp=report.created,
        hostname=socket.gethostname() or "localhost",
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("reference", report.reference),
        ("model", report.model),
        ("mode", report.mode),
        ("probes", ",".join(report.probes)),
    ):
        ET.SubElement(properties, "property", name=key, value=value)
    moved = "\n".join(
        f"{m['score']} L{m['layer']}H{m['head']}: {m['reference']:.6f} -> {m['fresh']:.6f} ({m['diff']:+.6f}), "
        f"rank {m['rank_reference']} -> {m['rank_fresh']}"
        for m in report.moved
    )
    for case in report.cases:
        classname = f"headprof.check.{case.name.split('.')[0]}"
        testcase = ET.SubElement(suite, "testcase", classname=classname, name=case.name, time=each)
        if not case.passed:
            failure = ET.SubElement(testcase, "failure", message=case.message, type="ScoreDrift")
            failure.text = f"{case.message}\nheads that moved most:\n{moved}"
    ET.SubElement(suite, "system-out").text = "\n".join([*report.notices, *(case.message for case in report.cases)])
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_junit(report: CheckReport, path: str | Path) -> None:
    """Write the JUnit XML file atomically."""
    write_text_atomic(path, junit_xml(report))
