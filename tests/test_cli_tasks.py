"""`eval --task ruler...`, `eval --task FILE` and `tasks build` through the CLI on the embedded model."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e


def _one_line_error(result, *fragments: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_eval_on_a_generated_ruler_task(cli, tmp_path, loaded):
    args = "eval --task ruler:niah_single_1 --lengths 300 --samples 2 --methods full,snapkv --budgets 64".split()
    result = cli(*args, "--cache", tmp_path / "c.jsonl", "--report", tmp_path / "r.json", cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "task scores" in result.stdout and "niah_single_1 @300" in result.stdout and "snapkv 64" in result.stdout
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["n_items"] == 2
    by = {(r["method"], r["budget"]): r for r in payload["results"]}
    assert set(by) == {("full", None), ("snapkv", 64)}
    for r in by.values():
        assert r["n"] == 2 and [(t["task"], t["length"], t["n"]) for t in r["tasks"]] == [("niah_single_1", 300, 2)]
        assert r["score"] == r["tasks"][0]["score"] and 0 <= r["score"] <= 100
    full, snap = by[("full", None)], by[("snapkv", 64)]
    assert full["score"] > 0  # the embedded model finds the 7-digit number in ~170 tokens of noise (both samples)
    assert snap["kv_bytes"] < full["kv_bytes"]
    cached = [json.loads(line)["record"] for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(cached) == 4 and {(r["task"], r["kind"], r["length"]) for r in cached} == {
        ("niah_single_1", "ruler", 300)
    }


def test_eval_on_a_longbench_file(cli, tmp_path, loaded):
    rows = [
        {
            "_id": "h1",
            "dataset": "hotpotqa",
            "input": "Which river runs through Carden?",
            "context": "Passage 1:\nThe river Ostwick runs through the town of Carden.\nPassage 2:\nTrains are fast.",
            "answers": ["Ostwick"],
            "all_classes": None,
            "length": 20,
        },
        {"_id": "x1", "input": "Which river?", "context": "The river is the Ostwick.", "answers": ["Ostwick"]},
    ]
    (tmp_path / "lb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli(
        "eval",
        "--task",
        "lb.jsonl",
        "--methods",
        "full",
        "--max-new-tokens",
        "8",
        "--cache",
        "c.jsonl",
        "--json",
        cwd=tmp_path,
    )
    assert result.code == 0, result.stderr
    assert "notice: 1 task row(s) with no dataset field: generic question prompt, scored by QA F1" in result.stderr
    (full,) = result.json()["results"]
    assert [t["task"] for t in full["tasks"]] == ["hotpotqa", "task"] and all(
        t["length"] is None for t in full["tasks"]
    )


def test_tasks_build_is_deterministic(cli, tmp_path, loaded):
    args = ("tasks", "build", "ruler:niah_multikey_2,fwe", "--lengths", "400", "--samples", "2")
    first = cli(*args, "--out", "a.jsonl", "--json", cwd=tmp_path)
    assert first.code == 0, first.stderr
    assert first.json()["per_task"] == {"niah_multikey_2": 2, "fwe": 2}
    assert cli(*args, "--out", "b.jsonl").code == 0
    assert cli(*args, "--seed", "1", "--out", "c.jsonl").code == 0
    a, b, c = ((tmp_path / f"{n}.jsonl").read_bytes() for n in "abc")
    assert a == b and a != c
    row = json.loads(a.splitlines()[0])
    assert {"_id", "dataset", "input", "context", "answers", "length", "answer_prefix", "max_new_tokens"} <= set(row)


@pytest.mark.parametrize(
    "row, fragment",
    [
        ({"context": "x", "input": None, "answers": ["a"]}, "bad.jsonl line 1: 'input' must be a string"),
        ({"context": "x", "input": "q", "answers": {}}, "bad.jsonl line 1: 'answers' must be a non-empty list"),
        ({"context": 7, "input": "q", "answers": ["a"]}, "bad.jsonl line 1: 'context' must be a non-empty string"),
    ],
)
def test_malformed_task_rows_fail_before_the_model_loads(cli, tmp_path, row, fragment):
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    _one_line_error(cli("eval", "--task", "bad.jsonl", cwd=tmp_path), fragment)


def test_bad_task_names_and_lengths(cli, tmp_path):
    _one_line_error(cli("eval", "--task", "ruler:niah_single_9", cwd=tmp_path), "unknown RULER task 'niah_single_9'")
    _one_line_error(cli("eval", "--task", "ruler:qa_2"), "RULER task qa_2 needs HotpotQA")
    _one_line_error(cli("eval", "--task", "ruler", "--lengths", "0"), "--lengths must be positive")
    _one_line_error(cli("eval", "--task", "ruler", "--samples", "0"), "--samples must be at least 1")
    _one_line_error(cli("eval", "--task", "none.jsonl"), "task file none.jsonl not found")
    _one_line_error(cli("tasks", "build", "hotpotqa", "--out", "x.jsonl"), "tasks build makes RULER rows")
    assert not (tmp_path / "x.jsonl").exists()
