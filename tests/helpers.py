"""Paths the tests share (imported by name; fixtures live in conftest.py)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEEDLES = REPO / "headprof" / "data" / "needles"  # packaged needle files
REFERENCE = REPO / "headprof" / "data" / "reference" / "smollm2-135m"  # packaged probes and scores of the model
PUBLISHED = REPO / "tests" / "fixtures" / "published"  # head means derived from ../shared (see its README)
SHARED_PUBLISHED = REPO.parent / "shared" / "fixtures" / "published-head-scores"
