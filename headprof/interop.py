"""Reading and writing the head-score JSON of the HeadKV and Retrieval-head code.

Their format: `{"layer-head": [per-probe score, ...], ...}`; a head's score is the mean of its
list. Importing keeps the lists as per-probe rows (all counted), so import -> export -> import is exact.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from headprof.artifacts import ScoreArtifact
from headprof.errors import HeadprofError
from headprof.fileio import sha256_file, write_text_atomic
from headprof.models.spec import ModelInfo

FORMATS = ("headkv-json",)
_KEY = re.compile(r"(0|[1-9][0-9]*)-(0|[1-9][0-9]*)")  # canonical only: "00-00" is not "0-0"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def read_json_strict(text: str) -> Any:
    """JSON as the standard has it: no NaN or Infinity literals, no number overflowing a float, no repeated
    keys (Python's json accepts all three silently)."""
    return json.loads(text, parse_constant=_no_constants, parse_float=_finite_float, object_pairs_hook=_unique_keys)


def guess_method(path: str | Path) -> str:
    """HeadKV names its retrieval-reasoning files '*reasoning*'; everything else is a retrieval score."""
    return "r2" if "reasoning" in Path(path).name.lower() else "retrieval"


def import_scores(path: str | Path, model: ModelInfo, method: str | None = None) -> ScoreArtifact:
    """A score artifact for `model` from a `{"layer-head": [scores]}` file, shape-checked against the model."""
    path = Path(path)
    method = method or guess_method(path)
    try:
        data = read_json_strict(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadprofError(f"score file {path} not found") from None
    except RecursionError:
        raise HeadprofError(f"score file {path} is nested too deeply to be a score file") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise HeadprofError(f"score file {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise HeadprofError(f"score file {path} is not a {{'layer-head': [scores]}} object")
    lengths = {len(v) if isinstance(v, list) else -1 for v in data.values()}
    if len(lengths) != 1 or -1 in lengths or 0 in lengths:
        raise HeadprofError(f"score file {path}: every head needs a non-empty list of per-probe scores of one length")
    n_probes = lengths.pop()
    heads = {}
    for key in data:
        match = _KEY.fullmatch(key)
        if not match:
            raise HeadprofError(f"score file {path}: key '{key}' is not 'layer-head'")
        layer, head = int(match[1]), int(match[2])
        if layer >= model.n_layers or head >= model.n_heads:
            raise HeadprofError(
                f"score file {path} has head {key}, outside {model.model_id} "
                f"({model.n_layers} layers x {model.n_heads} heads)"
            )
        heads[key] = (layer, head)
    # Keys are unique, canonical and inside the model: as many as the model's heads means every head once.
    if len(heads) != model.n_layers * model.n_heads:
        raise HeadprofError(
            f"score file {path} covers {len(heads)} heads; {model.model_id} has {model.n_layers * model.n_heads}"
        )
    rows = torch.zeros(n_probes, model.n_layers, model.n_heads)
    for key, (layer, head) in heads.items():
        values = data[key]
        if not all(type(v) in (int, float) for v in values):
            raise HeadprofError(f"score file {path}: head {key} has non-numeric scores")
        try:
            column = torch.tensor([float(v) for v in values], dtype=torch.float64).float()
        except OverflowError:  # an integer such as 10**400
            column = torch.tensor([math.inf])
        if not bool(column.isfinite().all()):
            raise HeadprofError(f"score file {path}: head {key} has scores beyond the float32 range")
        rows[:, layer, head] = column
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
    write_text_atomic(path, json.dumps(payload, allow_nan=False))
