"""What a new user trips over (issue 24): the version, usage exit codes, output that reads in a pipe (as CI
sees it: the in-process runner is not a terminal), honest certainty. No test here loads a model."""

from __future__ import annotations

import json

import pytest
import torch

from headprof import __version__, plots
from headprof.artifacts import load_scores, save_scores
from headprof.reliability import reliability_report

from helpers import REFERENCE

SCORES = REFERENCE / "scores.safetensors"


def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and result.stdout.strip() == f"headprof {__version__}"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--method", "foo", "--context", "x", "--question", "y"], "unknown method 'foo'"),
        (["run", "--question", "y"], "give exactly one of --context-file and --context"),
        (["allocate", "--budget", "128", "--policy", "magic"], "unknown policy 'magic'"),
    ],
)
def test_usage_errors_exit_2(cli, tmp_path, args, fragment):
    result = cli(*args, cwd=tmp_path)
    assert result.code == 2 and result.stderr.startswith("error: ") and fragment in result.stderr


def test_show_reads_in_a_pipe_budgets_are_whole_numbers(cli, tmp_path):
    alloc = cli("allocate", "--scores", SCORES, "--budget", "128", "--out", "a.safetensors", cwd=tmp_path)
    assert alloc.code == 0, alloc.stderr
    shown = cli("show", "a.safetensors", "--top", "3")
    assert shown.code == 0 and "budget" in shown.stdout and ".0000" not in shown.stdout
    scores = cli("show", SCORES, "--top", "3", "--splits", "5", "--bootstrap", "20")
    heat = scores.stdout.split("heatmap")[1].split("cells:")[0]
    assert set(heat) & set("@%#*+=-:.")  # shades, not coloured blanks
    assert "cells: ' ' = 0.0000 (lowest) ... '@' = " in scores.stdout  # the legend


def test_tables_in_a_pipe_are_not_cut(cli, tmp_path):
    listed = cli("tasks", "list", cwd=tmp_path)
    assert listed.code == 0 and "niah_multikey_1" in listed.stdout and "…" not in listed.stdout


def _one_needle_per_kind(tmp_path):
    art = load_scores(SCORES)
    keep = [next(i for i, k in enumerate(art.probe_kinds) if k == kind) for kind in ("retrieval", "reasoning")]
    keep = [i for i, g in enumerate(art.groups) if g in {art.groups[j] for j in keep}]
    path = tmp_path / "one.safetensors"
    save_scores(path, art.subset(keep))
    return path


def test_one_needle_per_kind_claims_no_certainty(cli, tmp_path, monkeypatch):
    path = _one_needle_per_kind(tmp_path)
    art = load_scores(path)
    report = reliability_report(art.per_probe["r2"], art.counted, art.probe_kinds, art.groups)
    assert report["top_heads"] == [] and "at least two needles of every kind" in report["bootstrap_reason"]
    shown = cli("show", path, "--top", "3", cwd=tmp_path)
    assert shown.code == 0 and "bootstrap intervals of r2: not available" in shown.stdout
    assert " - " not in shown.stdout.split("top 3 heads")[1]  # no zero-width interval anywhere
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, _path: figures.append(fig))
    plots.reliability_figure({"r2": report}, tmp_path / "r.png", "t")
    texts = [t.get_text() for ax in figures[0].axes for t in ax.texts]
    assert any("split-half agreement not available" in t for t in texts)
    assert any("bootstrap intervals not available" in t for t in texts)


def test_accuracy_plot_labels_points_within_one_doubling(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, _path: figures.append(fig))
    points = [plots.AccuracyPoint(1_100_000 + 50_000 * i, 0.5, b) for i, b in enumerate((64, 128, 256))]
    plots.accuracy_vs_bytes({"snapkv": points}, None, tmp_path / "a.png", "t")
    figures[0].canvas.draw()
    labels = [t.get_text() for t in figures[0].axes[0].get_xticklabels() if t.get_text()]
    assert len(labels) >= 2, labels


def test_lengths_help_says_what_a_length_is(cli):
    text = " ".join(cli("probes", "build", "--help").stdout.split())
    assert "every prompt fits within it" in text


def test_allocate_bytes_follow_the_dtype_that_runs(cli, tmp_path):
    result = cli("allocate", "--scores", SCORES, "--budget", "128", "--out", "a.st", "--json", cwd=tmp_path)
    expected = 2 if torch.cuda.is_available() else 4
    assert result.code == 0 and json.loads(result.stdout)["kv_bytes_full"] % expected == 0
    assert f"({expected} B/value)" in cli("allocate", "--scores", SCORES, "--budget", "128", "--out", "b.st").stdout


def test_allocate_rounds_as_headkv_does_when_asked(cli, tmp_path):
    # the reference's rounding itself is held by tests/test_fidelity.py's oracle; here the flag reaches it
    from headprof.artifacts import load_alloc

    for rounding in ("largest-remainder", "round"):
        args = ("allocate", "--scores", SCORES, "--budget", "64", "--rounding", rounding, "--out", f"{rounding}.st")
        assert cli(*args, cwd=tmp_path).code == 0
    exact, rounded = (load_alloc(tmp_path / f"{r}.st") for r in ("largest-remainder", "round"))
    assert int(exact.budgets.sum()) == 64 * exact.budgets.numel()  # the default spends exactly B per head
    assert not torch.equal(exact.budgets, rounded.budgets) and (exact.budgets - rounded.budgets).abs().max() <= 1
    bad = cli("allocate", "--scores", SCORES, "--budget", "64", "--rounding", "floor", cwd=tmp_path)
    assert bad.code == 2 and "unknown rounding 'floor'" in bad.stderr
