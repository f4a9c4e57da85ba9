"""RULER-style task generation: determinism, lengths in the model's tokens, and what each task asks."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from headprof.errors import HeadprofError
from headprof.probes import encode_text
from headprof.tasks import RulerConfig, generate_suite, read_task_file, resolve, write_task_file
from headprof.tasks.prompts import render_row, token_counter
from headprof.tasks.ruler import TokenCounter, TooShort, generate_task
from headprof.tasks.ruler_tasks import NOISE, RULER_TASKS


@pytest.fixture(scope="module")
def suite_1k(tokenizer):
    rows, skipped = generate_suite(RulerConfig(lengths=(1024,), samples=2), token_counter(tokenizer))
    assert not skipped
    return {(r.dataset, r.id): r for r in rows}


def _rows(suite, task):
    return [r for (name, _), r in suite.items() if name == task]


def test_same_seed_same_rows(tokenizer, suite_1k):
    counter = token_counter(tokenizer)
    again, _ = generate_suite(RulerConfig(lengths=(1024,), samples=2), counter)
    assert again == list(suite_1k.values())
    more = generate_task("niah_multikey_2", counter, 1024, 3)
    assert more[:2] == _rows(suite_1k, "niah_multikey_2")  # more samples leave the first ones unchanged
    other = generate_task("niah_multikey_2", counter, 1024, 2, seed=7)
    assert [r.answers for r in other] != [r.answers for r in more[:2]]


def test_every_row_fits_its_length(tokenizer, suite_1k):
    assert {name for name, _ in suite_1k} == set(RULER_TASKS)
    for row in suite_1k.values():
        rendered = render_row(tokenizer, row, 8192)
        n = len(encode_text(tokenizer, rendered.prompt, rendered.templated)["input_ids"])
        limit = RULER_TASKS[row.dataset].tokens_to_generate
        assert rendered.max_new_tokens == row.max_new_tokens == limit
        assert 0.75 * 1024 <= n + limit <= 1024, (row.id, n)
        assert rendered.prompt.endswith(row.answer_prefix) and rendered.context == row.context
        assert rendered.prompt.index(row.context) < rendered.prompt.index(row.input)


def test_niah_rows(suite_1k):
    single = _rows(suite_1k, "niah_single_1")[0]
    assert single.input.startswith("What is the special magic number for ")
    assert single.answer_prefix.endswith("mentioned in the provided text is")
    assert single.context.startswith("A special magic number is hidden") and NOISE in single.context
    assert f"is: {single.answers[0]}." in single.context
    uuid_row = _rows(suite_1k, "niah_single_3")[0]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid_row.answers[0])
    multikey = _rows(suite_1k, "niah_multikey_1")[0]
    assert multikey.context.count("One of the special magic numbers for ") == 4 and len(multikey.answers) == 1
    for name in ("niah_multikey_2", "niah_multikey_3"):
        row = _rows(suite_1k, name)[0]
        key = re.search(r"for (.+) mentioned", row.input).group(1)
        assert row.context.count(f" for {key} is: ") == 1  # distractor needles never reuse the key
        assert f" for {key} is: {row.answers[0]}." in row.context
        assert row.context.count("One of the special magic") > 5
    multivalue = _rows(suite_1k, "niah_multivalue")[0]
    key = re.search(r"numbers for (.+) mentioned", multivalue.input).group(1)
    assert len(multivalue.answers) == 4 and multivalue.input.startswith("What are all the special magic numbers")
    assert all(f"for {key} is: {v}." in multivalue.context for v in multivalue.answers)
    multiquery = _rows(suite_1k, "niah_multiquery")[0]
    keys = re.search(r"numbers for (.+) mentioned", multiquery.input).group(1).replace(", and ", ", ").split(", ")
    assert len(keys) == 4 and len(multiquery.answers) == 4
    assert all(f"for {k} is: {v}." in multiquery.context for k, v in zip(keys, multiquery.answers))


def test_vt_rows(suite_1k):
    row = _rows(suite_1k, "vt")[0]
    value = re.search(r"the value (\d{5}) in the text", row.input).group(1)
    names = row.answers
    assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{5}", n) for n in names)
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {b} = VAR {a} " for a, b in zip(names, names[1:])]
    positions = [row.context.index(line + "\n") for line in chain]
    assert positions == sorted(positions)
    example = row.context[: row.context.index("Memorize and track", 1)]  # the worked example comes first
    assert example.startswith("Memorize and track") and re.search(r"they are:  ([A-Z]{3} ){4}[A-Z]{3}\n$", example)
    assert row.answer_prefix.endswith(f"5 variables are assigned the value {value}, they are: ")


def test_cwe_and_fwe_rows(suite_1k):
    row = _rows(suite_1k, "cwe")[0]
    listed = row.context.rsplit("most often.\n", 1)[1]
    counts = Counter(re.findall(r"\d+\. (\w+)", listed))
    assert len(row.answers) == 10 and all(counts[w] == 6 for w in row.answers)  # 6x below 4096 tokens
    assert max(c for w, c in counts.items() if w not in row.answers) == 1
    row = _rows(suite_1k, "fwe")[0]
    counts = Counter(row.context.split("coded words. ", 1)[1].split())
    ranked = [w for w, _ in counts.most_common() if w != "..."]
    assert counts.most_common(1)[0][0] == "..." and list(row.answers) == ranked[:3]


def test_lengths_too_short_and_bad_names(tokenizer):
    counter = token_counter(tokenizer)
    with pytest.raises(TooShort, match="RULER task vt does not fit in 300 tokens"):
        generate_task("vt", counter, 300, 1)
    rows, skipped = generate_suite(RulerConfig(lengths=(300,), samples=1), counter, skip_too_short=True)
    assert {r.dataset for r in rows} >= {"niah_single_1", "niah_single_2"} and any("vt" in s for s in skipped)
    with pytest.raises(HeadprofError, match="exceeds the model's context window"):
        generate_suite(RulerConfig(lengths=(9000,)), counter, max_context=8192)
    assert resolve("ruler") == list(RULER_TASKS) and len(RULER_TASKS) == 11
    assert resolve("ruler:vt,cwe,vt") == ["vt", "cwe"]
    with pytest.raises(HeadprofError, match="unknown RULER task 'niah_single_9'"):
        resolve("ruler:niah_single_9")
    with pytest.raises(HeadprofError, match="needs SQuAD"):
        resolve("ruler:qa_1")


def test_longer_lengths_use_rulers_larger_counts():
    counter = TokenCounter.whitespace()  # words as tokens: sizing logic without a tokenizer
    row = generate_task("cwe", counter, 4096, 1)[0]
    counts = Counter(re.findall(r"\d+\. (\w+)", row.context.rsplit("most often.\n", 1)[1]))
    assert all(counts[w] == 30 for w in row.answers) and max(c for w, c in counts.items() if w not in row.answers) == 3
    assert len(counts) > 100
    rows = generate_task("niah_single_2", counter, 4096, 2)
    assert all(3000 < counter.prompt(r.context + r.input, r.answer_prefix) <= 4096 - 128 for r in rows)


def test_rows_round_trip_through_jsonl(tmp_path, suite_1k):
    rows = list(suite_1k.values())[:6]
    write_task_file(tmp_path / "ruler.jsonl", rows)
    assert read_task_file(tmp_path / "ruler.jsonl") == rows


def test_answer_lengths_are_rulers_own(tokenizer, suite_1k):
    """Every task answers in RULER's own tokens_to_generate (NVIDIA/RULER@c3f5e3b4f87f97e048793bb510a3a6b19a46bf3a
    scripts/data/synthetic/constants.py, TASKS[family]['tokens_to_generate']), and a rendered row keeps it
    unless the caller overrides it: a perfect cwe answer (10 numbered words) fits in 120 tokens, not in the 48 that
    benchmarks/results.py used to allow."""
    rulers = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50}
    assert {name: rulers[task.family] for name, task in RULER_TASKS.items()} == {
        name: task.tokens_to_generate for name, task in RULER_TASKS.items()
    }
    for (name, _), row in suite_1k.items():
        assert render_row(tokenizer, row, 1024).max_new_tokens == rulers[RULER_TASKS[name].family]
    cwe = next(row for (name, _), row in suite_1k.items() if name == "cwe")
    perfect = ", ".join(f"{i}. {word}" for i, word in enumerate(cwe.answers, 1))
    assert 48 < len(encode_text(tokenizer, perfect, True)["input_ids"]) <= 120
