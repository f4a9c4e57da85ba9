"""The kvpress bridge (integrations/kvpress) lives in kvpress's environment, whose transformers is older than
headprof's: it must import nothing but kvpress, torch, safetensors and the standard library. Its behaviour is
tested there (integrations/kvpress/tests, in a venv with kvpress's pins); here only what it imports."""

from __future__ import annotations

import ast
import sys

from helpers import REPO

ALLOWED = {"kvpress", "torch", "safetensors", "headprof_kvpress", "__future__"}


def test_the_kvpress_bridge_imports_only_kvpress_torch_and_safetensors():
    package = REPO / "integrations" / "kvpress" / "headprof_kvpress"
    imported = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert imported and imported - ALLOWED <= set(sys.stdlib_module_names), imported - ALLOWED
