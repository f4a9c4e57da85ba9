"""Evaluation and ablation: answer metrics, task files, disjointness, and the CLI on the embedded model."""

from __future__ import annotations

import json
import random

import pytest
import torch

from headprof.ablation import head_counts, matched_random_heads, top_mask
from headprof.artifacts import load_scores
from headprof.capture import HeadMeans, masked_heads
from headprof.errors import HeadprofError
from headprof.evaluation import check_disjoint, items_from_task
from headprof.heads import ranked_heads
from headprof.metrics import CRITERIA, answer_recall, exact_match, normalize_answer, token_f1
from headprof.probes import build_probes, load_needles, load_probes, write_probes
from headprof.scoring import ScoreConfig

from helpers import NEEDLES, REFERENCE


def test_normalisation_and_exact_match():
    assert normalize_answer("The  Code: COBALT-4417!") == "code cobalt4417"
    assert exact_match("The secret code for the Orion vault is cobalt-4417.", "cobalt-4417")
    assert not exact_match("The code is cobalt-44.", "cobalt-4417")
    assert not exact_match("a nice party", "art")  # whole words only
    assert exact_match("It is A Green Kite", "a green kite")


def test_generate_mode_criteria():
    """The default counts an answer only when it holds the answer value; HeadKV's sentence F1 (kept as `f1`) counts
    a wrong answer that repeats the sentence's frame."""
    sentence, gold = "Last spring, Halvard Quenby moved to the city of Tromsund.", "Tromsund"
    wrong, right = "Last spring, Halvard Quenby moved to the city of Oslo.", "He moved to Tromsund."
    f1, answer = CRITERIA["f1"], CRITERIA["answer"]
    assert f1.reference == "sentence" and f1.metric(wrong, sentence) > 0.5  # counted as right by F1
    assert answer.metric(wrong, gold) == 0.0
    assert answer.reference == "answer" and answer.metric(right, gold) == 1.0
    assert answer.metric("He moved to Tromsundby.", gold) == 0.0 and answer.metric("", gold) == 0.0
    assert ScoreConfig().criterion == "answer"


def test_token_f1_and_recall():
    assert token_f1("green kite", "a green kite") == 1.0
    assert token_f1("the red kite flies", "green kite") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert token_f1("", "kite") == 0.0
    assert answer_recall("Tomas's favourite thing is a green kite.", "a green kite") == 1.0
    assert answer_recall("a kite", "green kite") == 0.5


def test_task_file_items(tmp_path, tokenizer):
    rows = [
        {
            "context": "Alpha beta gamma. " * 30 + "The river is named Ostwick.",
            "input": "Name the river.",
            "answers": ["Ostwick"],
            "_id": "a",
        },
        {"context": "Long text about trains. " * 400, "input": "What is it about?", "answers": "trains"},
    ]
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = items_from_task(tokenizer, path, max_tokens=600)
    assert [i.id for i in items] == ["a", "task-2"] and items[1].answers == ["trains"]
    assert len(items[1].prompt_ids) <= 600 < len(tokenizer(rows[1]["context"])["input_ids"])  # middle truncated
    context_end = tokenizer.decode(items[0].prompt_ids[: items[0].context_tokens])
    assert context_end.endswith("Ostwick.") and "Name the river" not in context_end
    path.write_text('{"context": "x"}\n')
    with pytest.raises(HeadprofError, match="line 1: needs context, input, answers"):
        items_from_task(tokenizer, path, 600)


def test_eval_probes_must_not_share_needles(tokenizer):
    scores = load_scores(REFERENCE / "scores.safetensors")
    eval_needles = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")[:2]
    check_disjoint(build_probes(eval_needles, tokenizer, lengths=(300,), depths=(50,)), scores)
    scoring = load_probes(REFERENCE / "probes.jsonl")[:1]
    with pytest.raises(HeadprofError, match=r"share 1 needle\(s\) with the scoring probes \(r-orion-vault-code"):
        check_disjoint(scoring, scores)


def test_head_counts():
    assert head_counts("1%,2%,5%,10%", 270) == (3, 5, 14, 27) and head_counts("3,3", 270) == (3,)
    with pytest.raises(HeadprofError):
        head_counts("0", 270)
    with pytest.raises(HeadprofError):
        head_counts("lots", 270)


def test_random_heads_are_matched_per_layer_and_outside_the_top_set():
    scores = torch.zeros(6, 4)
    scores[0] = torch.tensor([9.0, 8.0, 7.0, 6.0])  # layer 0 entirely in the top set: borrows from layer 1
    scores[3, 2] = 5.0
    scores[5, :2] = torch.tensor([4.0, 3.0])
    top = top_mask(scores, 7)
    assert top.sum() == 7 and top[0].all()
    draws = [matched_random_heads(top, random.Random(seed)) for seed in range(20)]
    for drawn in draws:
        assert drawn.sum() == 7 and not (drawn & top).any()
        assert drawn[3].sum() == 1 and drawn[5].sum() == 2  # same count as the top set in these layers
        assert drawn[1].sum() == 4  # layer 0's four, borrowed from its nearest layer
    assert len({tuple(d.flatten().tolist()) for d in draws}) == 3  # layer 3 has three free heads to draw from


def test_masking_heads_changes_only_what_it_should(loaded):
    ids = loaded.tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        plain = loaded.model(ids).logits
        nothing = torch.zeros(30, 9, dtype=torch.bool)
        with masked_heads(loaded.model, nothing):
            same = loaded.model(ids).logits
        one_layer = nothing.clone()
        one_layer[3] = True
        with masked_heads(loaded.model, one_layer):
            changed = loaded.model(ids).logits
    torch.testing.assert_close(same, plain)
    assert (changed - plain).abs().max() > 1e-2
    assert loaded.model.config._attn_implementation == "sdpa"
    with torch.no_grad(), HeadMeans(loaded.model) as recorder:
        loaded.model(ids)
    means = recorder.means()
    assert means.shape == (30, 9, 64) and loaded.model.config._attn_implementation == "sdpa"
    with torch.no_grad(), masked_heads(loaded.model, one_layer, means):
        mean_ablated = loaded.model(ids).logits
    # the mean keeps the residual stream in range: a smaller change than zeroing the same heads
    assert 0 < (mean_ablated - plain).abs().mean() < (changed - plain).abs().mean()


@pytest.fixture
def eval_probes(workdir, tokenizer):
    needles = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")[:2]
    probes = build_probes(needles, tokenizer, lengths=(400,), depths=(30, 70), tokenizer_name="smollm2-135m")
    write_probes(workdir / "eval.jsonl", probes)
    return workdir / "eval.jsonl"


@pytest.mark.e2e
def test_eval_cli_table_json_plots_and_cache(cli, workdir, eval_probes):
    args = [
        "eval",
        "--methods",
        "full,snapkv,headkv,kvzip",
        "--budgets",
        "48,96",
        "--probes",
        eval_probes,
        "--scores",
        REFERENCE / "scores.safetensors",
        "--max-new-tokens",
        "20",
    ]
    first = cli(*args, "--json", "--png", "acc.png", cwd=workdir)
    assert first.code == 0, first.stderr
    results = first.json()["results"]
    assert {(r["method"], r["budget"]) for r in results} == {
        ("full", None),
        ("snapkv", 48),
        ("snapkv", 96),
        ("headkv", 48),
        ("headkv", 96),
        ("kvzip", 48),
        ("kvzip", 96),
    }
    by = {(r["method"], r["budget"]): r for r in results}
    assert all(r["n"] == 4 and 0 <= r["accuracy"] <= 1 and 0 <= r["f1"] <= 1 for r in results)
    assert by[("full", None)]["accuracy"] >= 0.5  # the embedded model retrieves at 400 tokens
    assert by[("snapkv", 48)]["kv_bytes"] < by[("snapkv", 96)]["kv_bytes"] < by[("full", None)]["kv_bytes"]
    assert (workdir / "acc.png").read_bytes()[:4] == b"\x89PNG" and (workdir / "acc-needles.png").is_file()
    cache = workdir / "headprof-out/smollm2-135m/eval-cache.jsonl"
    lines = len(cache.read_text().splitlines())
    assert lines == 4 * 7
    again = cli(*args, "--methods", "full,snapkv,headkv,kvzip,streamingllm", "--json")
    assert again.code == 0 and len(cache.read_text().splitlines()) == lines + 8  # only the new method ran
    assert [r for r in again.json()["results"] if r["method"] != "streamingllm"] == results
    table = cli(*args, "--png", "t.png")
    assert table.code == 0 and "B=48" in table.stdout and "headkv" in table.stdout
    assert "wrote t.png" in table.stdout and "wrote t-needles.png" in table.stdout  # both figures named
    assert "notice: 28 answers to compute (4 items x 7 method-budget configurations" in table.stderr


@pytest.mark.e2e
def test_eval_refuses_scoring_needles_and_bad_budgets(cli, workdir):
    scoring = workdir / "scoring.jsonl"
    write_probes(scoring, load_probes(REFERENCE / "probes.jsonl")[:1])
    result = cli(
        "eval",
        "--probes",
        scoring,
        "--methods",
        "snapkv",
        "--budgets",
        "64",
        "--scores",
        REFERENCE / "scores.safetensors",
        cwd=workdir,
    )
    assert result.code == 1 and "share 1 needle(s)" in result.stderr
    result = cli("eval", "--probes", scoring, "--methods", "snapkv", "--budgets", "16")
    assert result.code == 1 and "larger than the window" in result.stderr
    result = cli("eval", "--probes", scoring, "--methods", "lz4")
    assert result.code == 1 and "unknown method lz4" in result.stderr


@pytest.mark.e2e
def test_ablate_cli(cli, workdir, eval_probes):
    result = cli(
        "ablate",
        "--probes",
        eval_probes,
        "--top",
        "5%",
        "--random-trials",
        "2",
        "--png",
        "dose.png",
        "--max-new-tokens",
        "20",
        "--scores",
        REFERENCE / "scores.safetensors",
        "--compare",
        REFERENCE / "scores.safetensors",
        "--json",
        cwd=workdir,
    )
    assert result.code == 0, result.stderr
    report = result.json()
    (row,) = report["rows"]
    assert row["k"] == 14 and report["n_items"] == 4 and len(row["random"]) == 2 and report["ablation"] == "mean"
    assert all(0 <= value <= 1 for value in (report["baseline"], row["top"], row["random_mean"]))
    # the p-value and every item's outcome under every mask, from which the accuracies recompute
    assert row["p_value"] == (1 + row["random_at_or_below_top"]) / 3
    assert len(report["items"]) == 4 and row["top"] == sum(row["top_hits"]) / 4
    assert [sum(hits) / 4 for hits in row["random_hits"]] == row["random"]
    assert row["top_interval"]["low"] <= row["top"] <= row["top_interval"]["high"]
    assert 0.5 < report["split_half"]["spearman_median"] <= 1 and report["split_half"]["splits"] == 200
    assert report["vs_compare"]["spearman"] == pytest.approx(1.0)
    reference = load_scores(REFERENCE / "scores.safetensors")
    best = ranked_heads(reference.scores("r2"))[0]
    assert report["top_heads"][0] == [best // 9, best % 9]  # the reference artifact's best r2 head
    assert (workdir / "dose.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.e2e
def test_run_cli(cli, workdir, tiny_probes):
    probe = tiny_probes[0]
    context = probe.prompt[probe.prompt.index("user\n") + 5 : probe.prompt.index("\n\nQuestion:")]
    (workdir / "doc.txt").write_text(context)
    result = cli(
        "run",
        "--context-file",
        "doc.txt",
        "--question",
        probe.question,
        "--method",
        "snapkv",
        "--budget",
        "64",
        "--max-new-tokens",
        "20",
        "--json",
        cwd=workdir,
    )
    assert result.code == 0, result.stderr
    payload = result.json()
    assert set(payload) >= {
        "answer",
        "kv_bytes",
        "kv_bytes_full",
        "index_bytes",
        "prompt_tokens",
        "prefill_s",
        "compress_s",
        "decode_tokens_per_s",
    }
    assert payload["kv_bytes"] < payload["kv_bytes_full"] / 4 and payload["prompt_tokens"] == probe.n_tokens
    assert 0 < payload["index_bytes"] < payload["kv_bytes"] / 10  # an int32 position per kept entry, offsets
    headkv = cli(
        "run",
        "--context-file",
        "doc.txt",
        "--question",
        probe.question,
        "--max-new-tokens",
        "20",
        "--scores",
        REFERENCE / "scores.safetensors",
        "--budget",
        "64",
        "--json",
    )
    assert headkv.code == 0 and headkv.json()["method"] == "headkv" and headkv.json()["compressed"]
    nothing = cli("run", "--context", "Short text about a red-9 key.", "--question", "Which key?", "--budget", "512")
    assert nothing.code == 0 and "nothing was dropped (and no head was scored)" in nothing.stderr


@pytest.mark.e2e
def test_run_cli_errors(cli, workdir):
    from headprof.artifacts import AllocArtifact, save_alloc
    from headprof.models import ModelInfo

    def fails(result, fragment):
        assert result.code == 1 and "Traceback" not in result.stderr and fragment in result.stderr, result.stderr

    fails(
        cli("run", "--context-file", "missing.txt", "--question", "q", cwd=workdir),
        "context file missing.txt not found",
    )
    fails(cli("run", "--context", "  ", "--question", "q"), "empty context")
    unknown = cli("run", "--context", "text", "--question", "q", "--method", "gzip")
    assert unknown.code == 2 and "unknown method 'gzip'" in unknown.stderr  # a usage error, as typer's own
    other = ModelInfo("meta-llama/Meta-Llama-3-8B-Instruct", 32, 32, 8, 128, 8192, "")
    save_alloc(workdir / "llama.safetensors", AllocArtifact(other, torch.full((32, 32), 128), {"gqa": "query"}))
    fails(
        cli("run", "--context", "some text here.", "--question", "q", "--alloc", "llama.safetensors"),
        "allocation was made for meta-llama/Meta-Llama-3-8B-Instruct",
    )


def test_summary_and_report_carry_needle_cluster_intervals_and_paired_differences():
    from headprof.evaluation import EvalRecord, eval_report, summarize
    from headprof.intervals import cluster_bootstrap, paired_difference

    def record(method: str, budget: int | None, item: str, exact: bool) -> EvalRecord:
        return EvalRecord(method, budget, item, "retrieval", 1024, 50.0, "a", exact, float(exact), 10, 20)

    items = [f"n{i}@1024@{d}" for i in range(5) for d in (25, 75)]  # 5 needles x 2 depths
    full = [True] * 8 + [False] * 2
    headkv = [True] * 6 + [False] * 4
    snapkv = [True, False] * 2 + [False] * 6
    records = [record("full", None, i, e) for i, e in zip(items, full)]
    records += [record("headkv", 64, i, e) for i, e in zip(items, headkv)]
    records += [record("snapkv", 64, i, e) for i, e in zip(items, snapkv)]
    rows = {(r["method"], r["budget"]): r for r in summarize(records)}
    expected = cluster_bootstrap([float(e) for e in headkv], [i.split("@")[0] for i in items])
    assert rows[("headkv", 64)]["interval"] == [round(expected.low, 4), round(expected.high, 4)]
    assert rows[("headkv", 64)]["clusters"] == 5 and rows[("headkv", 64)]["accuracy"] == 0.6
    assert rows[("full", None)]["interval"][0] < 0.8 < rows[("full", None)]["interval"][1]
    paired = {(r["method"], r["budget"]): r for r in eval_report("m", records, len(items))["paired"]}
    assert set(paired) == {("full", 64), ("snapkv", 64)}
    diff = paired_difference(dict(zip(items, map(float, headkv))), dict(zip(items, map(float, snapkv))))
    assert paired[("snapkv", 64)]["value"] == round(diff.value, 4) == 0.4
    assert paired[("snapkv", 64)]["low"] == round(diff.low, 4) and paired[("snapkv", 64)]["clusters"] == 5
    assert "paired" not in eval_report("m", [r for r in records if r.method != "headkv"], len(items))
