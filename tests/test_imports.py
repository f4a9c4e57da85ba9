"""Light commands stay light: `--help`, `show`, `allocate` and `tasks list` never import transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REFERENCE

SCRIPT = """
import sys
from headprof.cli import main

try:
    main(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "transformers" or m == "headprof.capture")
print("heavy modules:", ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["show", "{scores}", "--json"],
        ["allocate", "--budget", "128", "--scores", "{scores}", "--out", "{tmp}/a.safetensors", "--json"],
        ["tasks", "list", "--json"],
    ],
    ids=["help", "show", "allocate", "tasks-list"],
)
def test_light_commands_do_not_import_transformers(args, tmp_path):
    scores = REFERENCE / "scores.safetensors"
    argv = [a.format(scores=scores, tmp=tmp_path) for a in args]
    done = subprocess.run([sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "heavy modules: \n" in done.stderr, done.stderr
