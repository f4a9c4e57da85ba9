"""Reading and writing the head-score JSON of the HeadKV and Retrieval-head code.

Their format: `{"layer-head": [per-probe score, ...], ...}`; a head's score is the mean of its
list. Importing keeps the lists as per-probe rows (all counted), so import -> export -> import is exact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from headprof.artifacts import ScoreArtifact
from headprof.errors import HeadprofError
from headprof.fileio import sha256_file, write_text_atomic
from headprof.models.spec import ModelInfo

FORMATS = ("headkv-json",)
_KEY = re.compile(r"(\d+)-(\d+)")


def guess_method(path: str | Path) -> str:
    """HeadKV names its retrieval-reasoning files '*reasoning*'; everything else is a retrieval score."""
    return "r2" if "reasoning" in Path(path).name.lower() else "retrieval"


def import_scores(path: str | Path, model: ModelInfo, method: str | None = None) -> ScoreArtifact:
    """A score artifact for `model` from a `{"layer-head": [scores]}` file, shape-checked against the model."""
    path = Path(path)
    method = method or guess_method(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HeadprofError(f"score file {path} not found") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise HeadprofError(f"score file {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise HeadprofError(f"score file {path} is not a {{'layer-head': [scores]}} object")
    lengths = {len(v) if isinstance(v, list) else -1 for v in data.values()}
    if len(lengths) != 1 or -1 in lengths or 0 in lengths:
        raise HeadprofError(f"score file {path}: every head needs a non-empty list of per-probe scores of one length")
    n_probes = lengths.pop()
    rows = torch.zeros(n_probes, model.n_layers, model.n_heads)
    seen = set()
    for key, values in data.items():
        match = _KEY.fullmatch(key)
        if not match:
            raise HeadprofError(f"score file {path}: key '{key}' is not 'layer-head'")
        layer, head = int(match[1]), int(match[2])
        if layer >= model.n_layers or head >= model.n_heads:
            raise HeadprofError(
                f"score file {path} has head {key}, outside {model.model_id} "
                f"({model.n_layers} layers x {model.n_heads} heads)"
            )
        try:
            rows[:, layer, head] = torch.tensor([float(v) for v in values])
        except (TypeError, ValueError):
            raise HeadprofError(f"score file {path}: head {key} has non-numeric scores") from None
        seen.add((layer, head))
    if len(seen) != model.n_layers * model.n_heads:
        raise HeadprofError(
            f"score file {path} covers {len(seen)} heads; {model.model_id} has {model.n_layers * model.n_heads}"
        )
    meta = {
        "mode": "imported",
        "methods": [method],
        "source": path.name,
        "source_sha256": sha256_file(path),
        "probe_indices": list(range(n_probes)),
        "probe_set_size": n_probes,
        "answers": [""] * n_probes,
        "gqa_reduce": "sum",
    }
    return ScoreArtifact(
        model,
        [f"{path.stem}#{i}" for i in range(n_probes)],
        ["imported"] * n_probes,
        torch.ones(n_probes, dtype=torch.bool),
        {method: rows},
        meta,
    )


def export_scores(art: ScoreArtifact, path: str | Path, method: str) -> None:
    """Write the counted probes' scores as `{"layer-head": [scores]}` (HeadKV / Retrieval-head layout)."""
    rows = art.per_probe[method][art.counted] if method in art.per_probe else None
    if rows is None:
        raise HeadprofError(f"artifact has no '{method}' scores (it has: {', '.join(art.methods)})")
    payload = {
        f"{layer}-{head}": rows[:, layer, head].tolist()
        for layer in range(art.model.n_layers)
        for head in range(art.model.n_heads)
    }
    write_text_atomic(path, json.dumps(payload))
