"""The GPU benchmarks run end to end at a small shape on the CPU, so a lent device finds them working: their
figures are read on the device, here only that every table fills and the bytes go where they should."""

from __future__ import annotations

import importlib.util
import json
import sys

from helpers import REPO


def test_llama8b_benchmark_runs_at_a_tiny_shape(tmp_path):
    spec = importlib.util.spec_from_file_location("llama8b_bench", REPO / "benchmarks" / "llama8b.py")
    bench = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(bench)
    bench.main(["--tiny", "--device", "cpu", "--max-batch", "2", "--new-tokens", "4", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "llama8b.json").read_text())
    rows = {(row["method"], row["batch"]): row for row in record["rows"]}
    assert set(rows) == {("full", 1), ("full", 2), ("headkv", 1), ("headkv", 2)}
    assert all(not row["error"] and row["tokens_per_s"] > 0 for row in rows.values())
    for batch in (1, 2):  # 512 prompt tokens kept whole vs B=64 per head: HeadKV holds about an eighth
        assert rows[("headkv", batch)]["kv_mib"] < 0.2 * rows[("full", batch)]["kv_mib"]
    assert rows[("full", 2)]["kv_mib"] == 2 * rows[("full", 1)]["kv_mib"]
    assert record["targets"]["full_best_batch"] in (1, 2)
    assert record["capture"]["capture_s"] > 0 and record["capture"]["sdpa_s"] > 0
    assert (tmp_path / "llama8b.md").read_text().count("| headkv |") == 2
