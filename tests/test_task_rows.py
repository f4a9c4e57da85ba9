"""LongBench-layout task rows: strict reading, per-dataset prompts, middle truncation, scoring through items."""

from __future__ import annotations

import json

import pytest

from headprof.errors import HeadprofError
from headprof.evaluation import items_from_rows, items_from_task
from headprof.probes import encode_text
from headprof.tasks import read_task_file
from headprof.tasks.longbench import DATASET_MAXLEN, DATASET_PROMPT
from headprof.tasks.metrics import DATASET_METRIC
from headprof.tasks.prompts import render_row, unknown_dataset_notice
from headprof.tasks.rows import TaskRow

CONTEXT = "Passage 1: The river Ostwick runs through Carden. Passage 2: Trains are fast."


def _write(tmp_path, *rows) -> str:
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "row, message",
    [
        ({"context": "x", "input": None, "answers": ["a"]}, "line 1: 'input' must be a string"),
        ({"context": "x", "input": "q", "answers": {}}, "line 1: 'answers' must be a non-empty list"),
        ({"context": "x", "input": "q", "answers": []}, "line 1: 'answers' must be a non-empty list"),
        ({"context": ["x"], "input": "q", "answers": ["a"]}, "line 1: 'context' must be a non-empty string"),
        ({"context": "  ", "input": "q", "answers": ["a"]}, "line 1: 'context' must be a non-empty string"),
        (
            {"context": "x", "input": "q", "answers": ["a"], "all_classes": "A"},
            "'all_classes' must be a non-empty list",
        ),
        ({"context": "x", "input": "q", "answers": ["a"], "dataset": 3}, "'dataset' must be a string"),
        ({"context": "x"}, "line 1: needs context, input, answers (missing input, answers)"),
        ("[1, 2]", "line 1: expected a JSON object"),
        ({"context": "x", "input": "q", "answers": [""]}, "line 1: 'answers' holds an empty string"),
        ('{"context": "x", "input": "q", "answers": [NaN]}', "line 1: 'answers' must be a non-empty list"),
        ({"context": "x", "input": "q\ud800", "answers": ["a"]}, "line 1: 'input' holds a lone surrogate"),
        ({"context": "x", "input": "q", "answers": ["a"], "_id": {"a": 1}}, "'_id' must be a string or an integer"),
        ({"context": "x", "input": "q", "answers": ["a"], "language": 7}, "'language' must be a string"),
        ({"context": "x", "input": "q", "answers": ["a"], "length": -3}, "'length' must be a non-negative integer"),
        ({"context": "x", "input": "q", "answers": ["a"], "max_new_tokens": 0}, "'max_new_tokens' must be a positive"),
        ("{oops", "line 1: not valid JSON"),
    ],
)
def test_malformed_rows_are_one_error(tmp_path, row, message):
    with pytest.raises(HeadprofError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_task_file(_write(tmp_path, row))


def test_reading_accepts_longbench_rows(tmp_path):
    path = _write(
        tmp_path,
        {
            "input": "",
            "context": "Report text.",
            "answers": ["A summary."],
            "length": 2,
            "dataset": "gov_report",
            "language": "en",
            "all_classes": None,
            "_id": "g1",
        },
        {"input": "How many?", "context": "p", "answers": [12], "dataset": "passage_count"},
    )
    first, second = read_task_file(path)
    assert (first.id, first.input, first.dataset, first.length) == ("g1", "", "gov_report", 2)
    assert second.answers == ("12",) and second.id == "task-2"
    with pytest.raises(HeadprofError, match="not found"):
        read_task_file(tmp_path / "none.jsonl")
    row = {"context": "c", "input": "q", "answers": ["a"], "_id": 7}
    with pytest.raises(HeadprofError, match="row id 7 twice"):
        read_task_file(_write(tmp_path, row, row))


def test_every_longbench_dataset_has_a_prompt_an_answer_length_and_a_metric():
    # the three tables are written apart (LB@2e00731 dataset2prompt, dataset2maxlen, dataset2metric): same keys
    assert set(DATASET_PROMPT) == set(DATASET_MAXLEN) == set(DATASET_METRIC)
    assert len(DATASET_PROMPT) >= 21


def test_longbench_prompts(tokenizer):
    qa = render_row(tokenizer, TaskRow("a", "hotpotqa", CONTEXT, "Which river?", ("Ostwick",)), 8192)
    assert qa.templated and qa.kind == "longbench" and qa.metric == "qa_f1" and qa.max_new_tokens == 32
    assert "The following are given passages.\n" + CONTEXT + "\n\nAnswer the question" in qa.prompt
    assert qa.prompt.index("Question: Which river?\nAnswer:") > qa.prompt.index(CONTEXT)
    trec = render_row(
        tokenizer,
        TaskRow(
            "t",
            "trec",
            "Q: Where is Carden?\nType: Location",
            "Q: Who?\nType:",
            ("Human",),
            all_classes=("Location", "Human"),
        ),
        8192,
    )
    assert (
        not trec.templated and trec.prompt.startswith("Please determine the type") and trec.metric == "classification"
    )
    assert trec.prompt.endswith("Type: Location\nQ: Who?\nType:") and trec.max_new_tokens == 64
    e_row = render_row(tokenizer, TaskRow("e", "qasper_e", CONTEXT, "Q?", ("x",)), 8192)
    assert e_row.task == "qasper" and e_row.max_new_tokens == 128
    with pytest.raises(HeadprofError, match="needs 'all_classes'"):
        render_row(tokenizer, TaskRow("t", "trec", "c", "q", ("Human",)), 8192)
    with pytest.raises(HeadprofError, match="must name a paragraph"):
        render_row(tokenizer, TaskRow("r", "passage_retrieval_en", "c", "q", ("3",)), 8192)


def test_middle_truncation_keeps_both_ends(tokenizer):
    context = "START of the story. " + "Filler sentence about nothing much. " * 400 + "The END is here."
    row = TaskRow("n", "narrativeqa", context, "How does it end?", ("here",))
    rendered = render_row(tokenizer, row, 600)
    n = len(encode_text(tokenizer, rendered.prompt, rendered.templated)["input_ids"])
    assert n + rendered.max_new_tokens <= 600 and n > 400
    assert rendered.context.startswith("START of the story.") and rendered.context.endswith("The END is here.")
    assert rendered.prompt.rstrip().endswith("Question: How does it end?\n\nAnswer:<|im_end|>\n<|im_start|>assistant")


def test_generic_rows_and_items(tmp_path, tokenizer):
    rows = [
        TaskRow("g", "", CONTEXT, "Which river?", ("Ostwick",)),
        TaskRow("u", "mystery", CONTEXT, "Which river?", ("Ostwick",)),
    ]
    notice = unknown_dataset_notice(rows)
    assert notice.startswith("2 task row(s) with unknown dataset mystery: generic question prompt, scored by QA F1")
    items = items_from_rows(tokenizer, rows, 8192)
    assert [(i.kind, i.task, i.metric, i.max_new_tokens) for i in items] == [
        ("task", "task", "qa_f1", 32),
        ("task", "mystery", "qa_f1", 32),
    ]
    path = _write(
        tmp_path,
        {
            "context": CONTEXT,
            "input": "Which river?",
            "answers": ["Ostwick"],
            "dataset": "niah_single_1",
            "answer_prefix": " The river is",
            "length": 500,
        },
    )
    (item,) = items_from_task(tokenizer, path, 8192, max_new_tokens=16)
    assert (item.kind, item.task, item.metric, item.max_new_tokens, item.length) == (
        "ruler",
        "niah_single_1",
        "string_match_all",
        16,
        500,
    )
    assert tokenizer.decode(item.prompt_ids).endswith("<|im_start|>assistant\n The river is")
    assert tokenizer.decode(item.prompt_ids[: item.context_tokens]).endswith("Trains are fast.")
