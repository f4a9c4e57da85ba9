"""Shared fixtures: one embedded model per test session, small probe sets, an in-process CLI runner."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import NEEDLES

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("HEADPROF_WORKDIR", None)  # outputs go to ./headprof-out of each test's folder


@pytest.fixture(scope="session")
def loaded():
    """The embedded SmolLM2-135M, loaded once (dequantized weights are cached on disk between runs)."""
    from headprof.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def tokenizer(loaded):
    return loaded.tokenizer


@pytest.fixture(scope="session")
def needles():
    from headprof.probes import load_needles

    return load_needles(NEEDLES / "needles-retrieval.jsonl")[:2] + load_needles(NEEDLES / "needles-reasoning.jsonl")[:2]


@pytest.fixture(scope="session")
def tiny_probes(tokenizer, needles):
    """Four probes of about 512 tokens: two retrieval, two reasoning, needle at mid depth."""
    from headprof.probes import build_probes

    return build_probes(needles, tokenizer, lengths=(512,), depths=(50,), seed=0, tokenizer_name="smollm2-135m")


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one JSON line, got: {self.stdout!r}"
        return json.loads(lines[0])


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `headprof ARGS` in-process from a working directory; returns exit code and captured output."""
    from headprof.cli import main

    def run(*args: str, cwd: Path | None = None) -> CliResult:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def workdir(tmp_path):
    """An empty working directory (commands write to its headprof-out/)."""
    return tmp_path
