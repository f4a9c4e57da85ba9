"""Reading and writing the head-score JSON of the HeadKV and Retrieval-head code.

Their format: `{"layer-head": [per-probe score, ...], ...}`; a head's score is the mean of its
list. Importing keeps the lists as per-probe rows (all counted), so import -> export -> import is exact.

The format has no place for the score kind (Retrieval-head's copy score or HeadKV's retrieval-reasoning
score): their loaders read every key of the object as a head (HeadKV views the list of means as
`[layers, heads]`), so one more key would break them. `export` therefore records the kind, and the hash of
the JSON it describes, in a sidecar `<file>.headprof.json` beside it; `import` reads it, and with no sidecar
(a published file, or a JSON moved without it) it refuses to guess: the caller names the kind.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from headprof import validation
from headprof.artifacts import METHODS, ScoreArtifact
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


SIDECAR_FORMAT = "headprof.export/1"


def sidecar_path(path: str | Path) -> Path:
    """Where `export` records what a score JSON holds: `<file>.headprof.json` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".headprof.json")


def recorded_method(path: str | Path) -> str | None:
    """The score kind `export` recorded for `path` (None: no sidecar). A sidecar that is malformed, or that
    describes another file (the JSON was replaced after the export), is refused rather than trusted."""
    side = sidecar_path(path)
    if not side.exists() and not side.is_symlink():
        return None
    validation.input_file(side, "score record")
    try:
        record = read_json_strict(side.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        raise HeadprofError(f"score record {side} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT or record.get("method") not in METHODS:
        raise HeadprofError(f"score record {side} is not a {SIDECAR_FORMAT} record with a method of {METHODS}")
    if record.get("sha256") != sha256_file(path):
        raise HeadprofError(
            f"score record {side} describes another version of {Path(path).name} (its hash differs): "
            "delete the record, or export again"
        )
    return record["method"]


def score_kind(path: str | Path, method: str | None, option: str = "method") -> str:
    """The kind of scores a JSON holds: `method` as given (it must agree with a record), else the record;
    never a guess. `option` names the caller's parameter in the refusal: `method` (Python), `--method` (CLI)."""

    def given(kind: str) -> str:
        return f"{option} {kind}" if option.startswith("--") else f"{option}={kind!r}"

    recorded = recorded_method(path)
    if method is not None:
        if method not in METHODS:
            raise HeadprofError(f"unknown score kind '{method}' ({', '.join(METHODS)})")
        if recorded is not None and recorded != method:
            raise HeadprofError(f"{given(method)}, but {sidecar_path(path)} records {recorded} scores")
        return method
    if recorded is None:
        hint = " (HeadKV names its retrieval-reasoning files '*reasoning*')" if "reasoning" in str(path) else ""
        raise HeadprofError(
            f"score file {path} does not record which scores it holds (no {sidecar_path(path).name} beside it): "
            f"give {given('retrieval')} (Retrieval-head's copy score) or {given('r2')} (HeadKV's){hint}"
        )
    return recorded


def import_scores(
    path: str | Path, model: ModelInfo, method: str | None = None, option: str = "method"
) -> ScoreArtifact:
    """A score artifact for `model` from a `{"layer-head": [scores]}` file, shape-checked against the model.

    `method`: `retrieval` or `r2`; None takes the kind `export` recorded beside the file, and refuses when
    there is none (`score_kind`, after the content is checked). `option`: how the refusal names `method`.
    """
    path = validation.input_file(path, "score file")
    try:
        data = read_json_strict(path.read_text(encoding="utf-8"))
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
    method = score_kind(path, method, option)
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
    """Write the counted probes' scores as `{"layer-head": [scores]}` (HeadKV / Retrieval-head layout), and
    the score kind in the sidecar `sidecar_path(path)`."""
    rows = art.per_probe[method][art.counted] if method in art.per_probe else None
    if rows is None:
        raise HeadprofError(f"artifact has no '{method}' scores (it has: {', '.join(art.methods)})")
    if rows.shape[0] == 0:
        raise HeadprofError(
            f"the artifact has no counted probe (of {len(art.probe_ids)}): there are no scores to export"
        )
    payload = {
        f"{layer}-{head}": rows[:, layer, head].tolist()
        for layer in range(art.model.n_layers)
        for head in range(art.model.n_heads)
    }
    write_text_atomic(path, json.dumps(payload, allow_nan=False))
    record = {
        "format": SIDECAR_FORMAT,
        "method": method,
        "model": art.model.model_id,
        "probes": int(rows.shape[0]),
        "sha256": sha256_file(path),
        "source_sha256": art.meta.get("sha256", ""),
    }
    write_text_atomic(sidecar_path(path), json.dumps(record, indent=1, sort_keys=True) + "\n")
