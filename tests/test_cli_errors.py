"""Bad input: one line naming the problem, a non-zero exit, no traceback, no artifact left behind."""

from __future__ import annotations

import pytest

from headprof.probes import write_probes

from helpers import REFERENCE

pytestmark = pytest.mark.e2e


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    text = " ".join(lines)
    assert "Traceback" not in result.stderr and text.startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def probes_file(workdir, tiny_probes):
    write_probes(workdir / "p.jsonl", tiny_probes[:1])
    return workdir / "p.jsonl"


def test_missing_and_corrupt_probe_files(cli, workdir):
    _assert_one_line_error(cli("score", "--probes", "nope.jsonl", cwd=workdir), "probe file nope.jsonl not found")
    (workdir / "bad.jsonl").write_text('{"id": "x", "prompt": 3}\n')
    _assert_one_line_error(cli("score", "--probes", "bad.jsonl"), "bad.jsonl line 1 is corrupt")
    assert not (workdir / "headprof-out").exists()


def test_missing_and_corrupt_needle_files(cli, workdir):
    _assert_one_line_error(
        cli("probes", "build", "--needles", "none.jsonl", cwd=workdir), "needle file none.jsonl not found"
    )
    (workdir / "n.jsonl").write_text("{not json\n")
    _assert_one_line_error(cli("probes", "build", "--needles", "n.jsonl"), "n.jsonl line 1: not valid JSON")


def test_empty_haystack_and_impossible_lengths(cli, workdir):
    (workdir / "empty.txt").write_text("")
    _assert_one_line_error(cli("probes", "build", "--haystack", "empty.txt", cwd=workdir), "empty or too short")
    _assert_one_line_error(cli("probes", "build", "--lengths", "30"), "more than the context length 30")
    _assert_one_line_error(cli("probes", "build", "--lengths", "9000"), "exceeds the model's context window (8192")
    _assert_one_line_error(cli("probes", "build", "--kind", "poetry"), "unknown kind 'poetry'")
    assert not (workdir / "headprof-out").exists()


def test_unknown_model_method_mode(cli, workdir, probes_file):
    _assert_one_line_error(
        cli("score", "--model", "no-such-model", "--probes", probes_file, cwd=workdir),
        "unknown model 'no-such-model'",
        "smollm2-135m",
    )
    _assert_one_line_error(cli("score", "--method", "attention", "--probes", probes_file), "unknown scoring method")
    _assert_one_line_error(cli("score", "--mode", "sample", "--probes", probes_file), "unknown mode 'sample'")
    _assert_one_line_error(
        cli("score", "--model", "no-org/no-such-model", "--probes", probes_file),
        "cannot load model 'no-org/no-such-model'",
    )
    _assert_one_line_error(cli("score", "--device", "gpu", "--probes", probes_file), "unknown device 'gpu'")
    _assert_one_line_error(cli("score", "--device", "cuda:7", "--probes", probes_file), "is not available")
    assert not (workdir / "headprof-out").exists()  # a failed run leaves no empty output folders behind


def test_bad_budgets_and_policies(cli, workdir, probes_file):
    scored = cli("score", "--probes", probes_file, "--out", "s.safetensors", "--json", cwd=workdir)
    assert scored.code == 0, scored.stderr
    _assert_one_line_error(
        cli("allocate", "--scores", "s.safetensors", "--budget", "32"), "budget 32 must be larger than the window 32"
    )
    _assert_one_line_error(
        cli("allocate", "--scores", "s.safetensors", "--budget", "100000"),
        "larger than any context the model takes (8192)",
    )
    _assert_one_line_error(
        cli("allocate", "--scores", "s.safetensors", "--budget", "128", "--policy", "magic"), "unknown policy 'magic'"
    )
    _assert_one_line_error(cli("allocate", "--scores", "missing.safetensors", "--budget", "128"), "not found")
    (workdir / "junk.safetensors").write_bytes(b"\x01\x02")
    _assert_one_line_error(cli("show", "junk.safetensors"), "corrupt or not a safetensors file")
    assert not list(workdir.glob("alloc-*"))


def test_unwritable_output_directory(cli, workdir, probes_file):
    (workdir / "afile").write_text("x")
    _assert_one_line_error(
        cli("score", "--probes", probes_file, "--out", "afile/s.safetensors", cwd=workdir),
        "output directory afile is not writable",
    )
    _assert_one_line_error(
        cli("probes", "build", "--lengths", "300", "--out", "afile/p.jsonl"), "output directory afile is not writable"
    )


def test_bad_option_value_is_one_line(cli, workdir):
    _assert_one_line_error(cli("allocate", "--budget", "many", cwd=workdir), "Invalid value for '--budget'")


def test_more_malformed_input(cli, workdir, probes_file):
    _assert_one_line_error(
        cli("probes", "build", "--depths", "50,50", cwd=workdir), "repeated context lengths or depths"
    )
    _assert_one_line_error(cli("probes", "build", "--lengths", ","), "at least one context length")
    (workdir / "odd.jsonl").write_text('"hello"\n')
    _assert_one_line_error(cli("score", "--probes", "odd.jsonl"), "odd.jsonl line 1 is corrupt")
    (workdir / "latin1.jsonl").write_bytes(b'{"needle": "caf\xe9"}\n')
    _assert_one_line_error(cli("probes", "build", "--needles", "latin1.jsonl"), "is not UTF-8 text")
    ref = REFERENCE / "scores.safetensors"
    _assert_one_line_error(cli("compare", ref, ref, "--k", "0"), "top-k must be between 1 and the number of heads")
    _assert_one_line_error(cli("compare", ref, ref, "--k", "300"), "top-k must be between 1")
    _assert_one_line_error(
        cli("allocate", "--scores", ref, "--budget", "128", "--bytes-per-value", "0", "--out", "x.safetensors"),
        "must be positive",
    )
    assert not (workdir / "x.safetensors").exists()
    (workdir / "types.jsonl").write_text(probes_file.read_text().replace('"answer_chars": [', '"answer_chars": ["0", '))
    _assert_one_line_error(cli("score", "--probes", "types.jsonl"), "types.jsonl line 1 is corrupt", "answer_chars")
    _assert_one_line_error(cli("show", ref, "--top", "0"), "--top must be at least 1")


def test_runtime_and_eval_input_fails_before_the_model_loads(cli, workdir, probes_file):
    ref = REFERENCE / "scores.safetensors"
    _assert_one_line_error(
        cli("run", "--method", "zip", "--context", "x", "--question", "y", cwd=workdir), "unknown method 'zip'"
    )
    _assert_one_line_error(
        cli("run", "--kernel", "4", "--context", "x", "--question", "y"), "pooling kernel must be an odd number"
    )
    _assert_one_line_error(cli("eval", "--probes", probes_file, "--gqa", "group"), "--gqa must be kv or query")
    _assert_one_line_error(cli("eval", "--probes", probes_file, "--pooling", "median"), "unknown pooling 'median'")
    _assert_one_line_error(cli("eval", "--task", "none.jsonl"), "task file none.jsonl not found")
    _assert_one_line_error(
        cli("ablate", "--scores", ref, "--probes", probes_file, "--random-trials", "0"),
        "--random-trials and --max-new-tokens must be at least 1",
    )
    _assert_one_line_error(cli("ablate", "--scores", ref, "--probes", probes_file, "--top", "0"), "selects 0 heads")


def test_short_haystack_is_refused(cli, workdir):
    text = " ".join(f"Sentence number {i} of this short text says nothing in particular at all." for i in range(30))
    (workdir / "short.txt").write_text(text)
    _assert_one_line_error(
        cli("probes", "build", "--haystack", "short.txt", "--lengths", "4096", cwd=workdir), "the haystack fills only"
    )
