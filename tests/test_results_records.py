"""The committed results recompute from their records: benchmarks/RESULTS.md is what `benchmarks/results.py`
renders from results.json (and policies.json), and results.json's needle and RULER statistics are what its
seeded cluster bootstrap gives on the committed per-item records. A hand edit of a number, or records that no
longer match the tables, fails here."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import pytest

from headprof import evaluation as E

from helpers import REPO

BENCH = REPO / "benchmarks"


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("results_bench", BENCH / "results.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def payload():
    return json.loads((BENCH / "results.json").read_text())


def _records(name: str) -> list[E.EvalRecord]:
    lines = (BENCH / name).read_text().splitlines()
    return [E.EvalRecord(**json.loads(line)) for line in lines if line]


def test_results_md_is_rendered_from_results_json(results, payload):
    sizes = results.Sizes(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["sizes"].items()})
    paths = results.Paths(BENCH, REPO / "docs")
    args = argparse.Namespace(haystack="/usr/share/common-licenses", exact_decode=False)
    rendered = results._markdown(payload, sizes, paths, args, payload.get("batched", True))
    assert rendered == (BENCH / "RESULTS.md").read_text()


def test_needle_and_ruler_statistics_recompute_from_the_records(results, payload):
    assert results._statistics(_records("results-records.jsonl"), "exact") == payload["needles"]
    assert results._statistics(_records("results-records-ruler.jsonl"), "score") == payload["ruler"]["overall"]
