"""Probe files: JSONL written atomically, read back with every row checked; whose tokenizer built them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from headprof.errors import HeadprofError
from headprof.fileio import atomic_path, jsonl_line
from headprof.models.spec import resolve_model
from headprof.probes.probe import Probe
from headprof.validation import read_lines


def write_probes(path: str | Path, probes: Sequence[Probe]) -> None:
    """Write probes as JSONL (sorted keys, one per line), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for probe in probes:
                fh.write(jsonl_line(asdict(probe), sort_keys=True))


def load_probes(path: str | Path) -> list[Probe]:
    """Read and validate a probe file; every problem names the file and line."""
    path = Path(path)
    probes: list[Probe] = []
    for lineno, line in enumerate(read_lines(path, "probe file", " (build one with: headprof probes build)"), 1):
        if not line.strip():
            continue
        try:
            probes.append(Probe.from_dict(json.loads(line)))
        except (HeadprofError, ValueError, TypeError, KeyError, RecursionError) as exc:  # ValueError: not JSON
            raise HeadprofError(f"probe file {path} line {lineno} is corrupt: {exc}") from None
    if not probes:
        raise HeadprofError(f"probe file {path} has no probes")
    if len({p.id for p in probes}) != len(probes):
        raise HeadprofError(f"probe file {path} has duplicate probe ids")
    return probes


def foreign_tokenizers(probes: Sequence[Probe], model: str) -> list[str]:
    """The tokenizers (other than `model`'s) the probes were built with: their lengths and template are those."""

    def model_id(name: str) -> str:
        try:
            return resolve_model(name).model_id
        except HeadprofError:
            return name

    mine = model_id(model)
    return sorted({p.tokenizer for p in probes if p.tokenizer and model_id(p.tokenizer) != mine})
