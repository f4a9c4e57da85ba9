"""The results cache: one scored answer per row of an append-only JSONL, keyed by configuration and item.

Cached rows are checked field by field when read (`_cached_record`), so an edited file cannot report a result
that was never computed; a line torn by a crash is skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from headprof import validation
from headprof.errors import HeadprofError


@dataclass
class EvalRecord:
    """One answer under one method and budget, scored, with the KV bytes it needed: a results-cache row."""

    method: str
    budget: int | None
    item: str
    kind: str
    length: int
    depth: float | None
    answer: str
    exact: bool
    f1: float
    kv_bytes: int
    kv_bytes_full: int
    task: str = ""
    score: float | None = None  # the task's own metric in [0, 1]; None for probes


# What each results-cache field holds: (types allowed, low, high); `task` and `score` are optional (older rows).
_FIELDS: dict[str, tuple[tuple[type, ...], float | None, float | None]] = {
    "method": ((str,), None, None),
    "budget": ((int, type(None)), 1, None),
    "item": ((str,), None, None),
    "kind": ((str,), None, None),
    "length": ((int,), 0, None),
    "depth": ((int, float, type(None)), 0, 100),
    "answer": ((str,), None, None),
    "exact": ((bool,), None, None),
    "f1": ((int, float), 0, 1),
    "kv_bytes": ((int,), 0, None),
    "kv_bytes_full": ((int,), 0, None),
    "task": ((str,), None, None),
    "score": ((int, float, type(None)), 0, 1),
}
_OPTIONAL = ("task", "score")


def _cached_record(row: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A results-cache row as `(key, record)`, every field of its type and range: an edited row (`f1` 1.5,
    `kv_bytes` -5, a field missing or unknown) is refused, never reported as a result."""
    fix = "; delete that line (or the file) and its result is computed again"
    if not isinstance(row, dict) or set(row) != {"key", "record"} or not isinstance(row["key"], str):
        raise HeadprofError(f"{where} is not a {{'key', 'record'}} row{fix}")
    record = row["record"]
    if not isinstance(record, dict):
        raise HeadprofError(f"{where}: the record is not an object{fix}")
    missing = [name for name in _FIELDS if name not in record and name not in _OPTIONAL]
    extra = sorted(set(record) - set(_FIELDS))
    if missing or extra:
        raise HeadprofError(
            f"{where}: the record {'lacks ' + str(missing) if missing else 'has unknown ' + str(extra)}{fix}"
        )
    for name, value in record.items():
        types, low, high = _FIELDS[name]
        wrong_type = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if wrong_type or (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high))
        ):
            raise HeadprofError(f"{where}: {name} {value!r} is not a valid value{fix}")
    return row["key"], record


@dataclass
class ResultCache:
    """Append-only JSONL of finished results. A torn last line from a crash (not JSON) is ignored and the next
    row starts on a line of its own; a row that is JSON but not a valid result is refused (`_cached_record`)."""

    path: Path | None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path | None) -> ResultCache:
        cache = cls(Path(path) if path else None)
        if cache.path and (cache.path.exists() or cache.path.is_symlink()):
            what = "results cache"
            validation.input_file(cache.path, what)
            text = cache.path.read_bytes().decode("utf-8", errors="replace")
            for lineno, line in enumerate(text.split("\n"), 1):
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    continue  # a line torn by a crash
                key, record = _cached_record(row, f"{what} {cache.path} line {lineno}")
                cache.rows[key] = record
        return cache

    def add(self, key: str, record: EvalRecord) -> None:
        self.rows[key] = asdict(record)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as fh:
                torn = fh.tell() > 0 and fh.seek(-1, 2) >= 0 and fh.read(1) != b"\n"
                line = ("\n" if torn else "") + json.dumps({"key": key, "record": asdict(record)}) + "\n"
                fh.write(line.encode("utf-8"))
