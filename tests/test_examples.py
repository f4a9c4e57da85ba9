"""The scripts in examples/ run as a user runs them (`python examples/NAME.py ARGS`), at small sizes, in this
process: they share the session's embedded model instead of loading it again (their `load_model` call
returns it), everything else is theirs."""

from __future__ import annotations

import runpy
import sys

import pytest
from safetensors import safe_open

from helpers import REPO

pytestmark = pytest.mark.e2e


@pytest.fixture
def run_example(loaded, monkeypatch, capsys, tmp_path):
    import headprof.models

    monkeypatch.setattr(headprof.models, "load_model", lambda name="smollm2-135m", **_k: loaded)
    monkeypatch.chdir(tmp_path)

    def run(name: str, *args: str) -> str:
        monkeypatch.setattr(sys, "argv", [name, *args])
        capsys.readouterr()
        runpy.run_path(str(REPO / "examples" / name), run_name="__main__")
        return capsys.readouterr().out

    return run


def test_profile_model(run_example, tmp_path):
    args = ("--needles", "1", "--lengths", "256", "--depths", "50", "--budget", "64", "--out", "p")
    out = run_example("profile_model.py", *args)
    assert "2 probes" in out and "top r2 heads" in out
    with safe_open(str(tmp_path / "p" / "alloc-b64.safetensors"), "pt") as fh:
        assert fh.get_tensor("budgets").float().mean() == pytest.approx(64, abs=1)


def test_compress_in_your_own_generate_loop(run_example):
    out = run_example("compress_generate.py", "--budget", "64", "--max-new-tokens", "16")
    assert "7341" in out and "compressed: True" in out


def test_evaluate_on_ruler(run_example):
    args = ("--tasks", "niah_single_1", "--lengths", "512", "--samples", "1", "--methods", "full,snapkv")
    out = run_example("evaluate_ruler.py", *args, "--budgets", "64")
    assert "full cache" in out and "budget 64" in out and "niah_single_1" in out
