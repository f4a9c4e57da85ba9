"""The installed tool: build the wheel, install it into a fresh venv, run the main job from an empty folder.

Offline and fast: the wheel is built without build isolation, installed with `pip --python VENV install
--no-deps --no-index`, and the venv then reuses this environment's packages (torch, transformers, the
embedded model) through a `.pth` file listing this environment's site-packages folders, written after the install
so that pip sees an empty venv. A `.pth` line only adds a folder to `sys.path` (the `.pth` files inside it,
such as an editable install's hook, are not run) and PYTHONPATH is dropped, so the headprof that runs is the
installed copy: the test checks `headprof.__file__`. The sources are copied before building, so a stale
`build/` folder of the checkout can never leak into the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = [pytest.mark.wheel, pytest.mark.e2e]


def _run(args: list, cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with the built wheel installed and this environment's packages on its path."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(REPO / "headprof", src / "headprof", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HEADPROF_WORKDIR")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", base / "dist", src], base, env)
    (wheel,) = (base / "dist").glob("headprof-*.whl")
    assert wheel.stat().st_size < 1_000_000  # code, needles and the reference: no stray files
    target = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", target], base, env)
    python = target / "bin" / "python"
    _run([*pip, "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], base, env)
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], base, env).stdout
    ours = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]  # .pth-added ones too
    Path(purelib.strip(), "outer-env.pth").write_text("\n".join(ours) + "\n")
    return target


def test_main_job_runs_from_an_empty_folder(venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HEADPROF_WORKDIR")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    which = _run(["python", "-c", "import headprof; print(headprof.__file__)"], tmp_path, env).stdout
    assert Path(which.strip()).is_relative_to(venv), which  # the installed copy, not the checkout
    package = Path(which.strip()).parent
    before = sorted(p for p in package.rglob("*") if "__pycache__" not in p.parts)

    assert _run(["headprof"], tmp_path, env).stdout.startswith("Usage: headprof")
    built = _run(
        ["headprof", "probes", "build", "--lengths", "200", "--depths", "50", "--limit", "1", "--json"], tmp_path, env
    )
    assert json.loads(built.stdout) | {"sha256": "", "seconds": 0} == {
        "probes": "headprof-out/smollm2-135m/probes.jsonl",
        "count": 2,
        "per_kind": {"retrieval": 1, "reasoning": 1},
        "sha256": "",
        "seconds": 0,
    }
    scored = _run(["headprof", "score", "--json"], tmp_path, env)
    assert json.loads(scored.stdout)["artifact"] == "headprof-out/smollm2-135m/scores.safetensors"
    assert "scoring smollm2-135m: 2/2 (100%)" in scored.stderr  # stderr is a pipe: plain progress lines
    alloc = json.loads(_run(["headprof", "allocate", "--budget", "48", "--json"], tmp_path, env).stdout)["artifact"]
    assert alloc == "headprof-out/smollm2-135m/alloc-b48-headkv.safetensors"
    shown = _run(["headprof", "show", "--top", "3"], tmp_path, env)
    assert shown.stdout.startswith("headprof-out/smollm2-135m/scores.safetensors: r2 score") and not shown.stderr
    context = "The vault code is 4417. " + "The weather was mild and nothing else happened. " * 12
    answered = _run(
        [
            "headprof",
            "run",
            "--alloc",
            alloc,
            "--context",
            context,
            "--question",
            "What is the vault code?",
            "--max-new-tokens",
            "4",
            "--json",
        ],
        tmp_path,
        env,
    )
    result = json.loads(answered.stdout)
    assert result["method"] == "headkv" and result["compressed"] and result["kv_bytes"] < result["kv_bytes_full"]

    other = _run(["headprof", "--workdir", "elsewhere", "allocate", "--budget", "48", "--json"], tmp_path, env)
    assert "using the packaged reference scores of smollm2-135m" in other.stderr
    assert json.loads(other.stdout)["artifact"] == "elsewhere/smollm2-135m/alloc-b48-headkv.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "headprof-out"]
    assert sorted(p for p in package.rglob("*") if "__pycache__" not in p.parts) == before  # nothing written there
