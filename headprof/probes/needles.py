"""Needle files: JSONL facts with a question and answer, read and checked, chosen by kind."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from headprof.errors import HeadprofError
from headprof.probes.probe import KINDS, Needle
from headprof.validation import read_lines


def load_needles(path: str | Path, kind: str | None = None) -> list[Needle]:
    """Read and validate a needle JSONL file; every problem names the file and line."""
    path = Path(path)
    needles: list[Needle] = []
    seen: set[str] = set()
    for lineno, line in enumerate(read_lines(path, "needle file"), 1):
        if not line.strip():
            continue
        where = f"needle file {path} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HeadprofError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise HeadprofError(f"{where}: expected a JSON object")
        for key in _NEEDLE_FIELDS:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise HeadprofError(f"{where}: missing or empty field '{key}'")
        if row["kind"] not in KINDS:
            raise HeadprofError(f"{where}: kind must be one of {', '.join(KINDS)}, got '{row['kind']}'")
        sentence = row.get("sentence", row.get("span")) or row["needle"]  # `span`: the field's older name
        if not isinstance(sentence, str):
            raise HeadprofError(f"{where}: field 'sentence' must be a string")
        sentence, answer = sentence.strip(), row["answer"].strip()
        if row["needle"].count(sentence) != 1:
            raise HeadprofError(f"{where}: the sentence must occur exactly once in the needle")
        if answer.lower() not in sentence.lower():
            raise HeadprofError(f"{where}: answer '{answer}' does not occur in the sentence")
        needle_id = str(row.get("id") or f"{path.stem}-{lineno}")
        if needle_id in seen:
            raise HeadprofError(f"{where}: duplicate needle id '{needle_id}'")
        seen.add(needle_id)
        needles.append(Needle(needle_id, row["kind"], row["needle"].strip(), row["question"].strip(), answer, sentence))
    if not needles:
        raise HeadprofError(f"needle file {path} has no needles")
    if kind is not None:
        needles = [n for n in needles if n.kind == kind]
    return needles


_NEEDLE_FIELDS = ("needle", "question", "answer", "kind")


def select_needles(files: Sequence[str | Path], kinds: Sequence[str]) -> list[Needle]:
    """The needles of the given kinds from several files; none at all is an error naming the files."""
    needles = [n for f in files for n in load_needles(f) if n.kind in kinds]
    if not needles:
        raise HeadprofError(f"no {' or '.join(kinds)} needles in {', '.join(map(str, files))}")
    return needles
