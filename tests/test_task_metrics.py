"""RULER and LongBench metrics on hand-checked cases (each confirmed against the reference code, see the
case ids of /work/notes/ruler-longbench.md section 12), and the LongBench prompt table against its source."""

from __future__ import annotations

import hashlib
import json

import pytest

from headprof.errors import HeadprofError
from headprof.tasks import metrics as M
from headprof.tasks.longbench import DATASET_MAXLEN, DATASET_PROMPT, canonical_dataset
from headprof.tasks.prompts import score_prediction

TREC = ["Location", "Human", "Entity"]


@pytest.mark.parametrize(
    "case, pred, gold, expected",
    [
        ("F1", "The cat sat", "cat sat down", 0.8),
        ("F2", "Paris.", "paris", 1.0),
        ("F3", "an apple a day", "The apple!", 2 / 3),
        ("F4", "the the", "a", 0.0),
        ("F5", "cat cat cat", "cat dog", 0.4),
        ("F6", "well-known fact", "well known fact", 0.4),
        ("F7", "1,000 people", "1000", 2 / 3),
        ("F8", "", "cat", 0.0),
    ],
)
def test_qa_f1(case, pred, gold, expected):
    assert M.qa_f1(pred, gold) == pytest.approx(expected, abs=1e-9), case


@pytest.mark.parametrize(
    "case, pred, gold, classes, expected",
    [
        ("C1", "Location", "Location", TREC, 1.0),
        ("C2", "Human or Location", "Location", TREC, 0.5),
        ("C3", "other date", "other date", ["date", "other date"], 1.0),
        ("C4", "other date", "date", ["date", "other date"], 0.5),
        ("C5", "ab c", "ab c", ["a", "b", "ab c"], 0.5),  # the reference's skip quirk (a fixed loop gives 1.0)
        ("C6", "location", "Location", TREC, 0.0),
        ("C7", "", "Location", TREC, 0.0),
    ],
)
def test_classification(case, pred, gold, classes, expected):
    assert M.classification(pred, gold, all_classes=classes) == pytest.approx(expected), case


@pytest.mark.parametrize(
    "case, pred, expected",
    [
        ("R1", "Paragraph 12", 1.0),
        ("R2", "Paragraph 12 or Paragraph 3", 0.5),
        ("R3", "The answer is Paragraph 2", 0.0),
        ("R4", "I don't know", 0.0),
        ("R5", "Paragraph 012", 0.0),
    ],
)
def test_retrieval(case, pred, expected):
    assert M.retrieval(pred, "Paragraph 12") == expected, case


def test_retrieval_needs_a_paragraph_label():
    with pytest.raises(HeadprofError, match="must name a paragraph"):
        M.retrieval("12", "12")
    assert M.retrieval_zh("段落3", "段落3") == 1.0


@pytest.mark.parametrize(
    "case, pred, gold, expected",
    [
        ("N1", "There are 12 unique paragraphs out of 20", "12", 0.5),
        ("N2", "12", 12, 1.0),
        ("N3", "twelve", "12", 0.0),
        ("N4", "12, 12, 13", "12", 2 / 3),
    ],
)
def test_count(case, pred, gold, expected):
    assert M.count(pred, gold) == pytest.approx(expected), case


@pytest.mark.parametrize(
    "case, pred, gold, expected",
    [
        ("S1", "\n```python\nx = 1\n```", "x = 1", 1.0),
        ("S2", "# comment\nreturn a + b", "return a+b", 0.91),
        ("S3", "", "x = 1", 0.0),
        ("S4", "abc", "abd", 0.67),
        ("S5", "  return x", "return x", 0.89),
        ("S6", "// c\n# d", "x", 0.0),
        ("S7", "a ac", "acbb ccc", 0.50),  # python-Levenshtein's indel ratio (difflib would give 0.33)
    ],
)
def test_code_sim(case, pred, gold, expected):
    assert M.code_sim(pred, gold) == pytest.approx(expected), case


def test_fuzz_ratio_edges():
    assert M.fuzz_ratio("", "") == 100 and M.fuzz_ratio("a", "") == 0
    assert M.lcs_length("abcbdab", "bdcaba") == 4


@pytest.mark.parametrize(
    "case, pred, gold, expected",
    [
        ("G1", "the cat sat on the mat", "the cat lay on the mat", 0.8),
        ("G2", "", "anything", 0.0),
        ("G3", "a b. c d", "a b c d", 1.0),
        ("G4", "Cat", "cat", 0.0),
        ("G5", "the cat", "the cat sat down", 2 / 3),
        ("G6", "...", "the cat", 0.0),
        ("G7", "b a", "a b", 0.5),
    ],
)
def test_rouge_l(case, pred, gold, expected):
    assert M.rouge_l(pred, gold) == pytest.approx(expected, abs=1e-6), case


def test_rouge_l_long_sentence_is_scored():
    text = " ".join(f"w{i}" for i in range(1100))  # the reference's recursion gives up (0.0) here
    assert M.rouge_l(text, text) == pytest.approx(1.0, abs=1e-6)


def test_qa_f1_zh():
    pytest.importorskip("jieba")
    assert M.qa_f1_zh("北京。", "北京") == pytest.approx(1.0)  # Z1


def test_chinese_metrics_without_jieba_are_one_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_jieba(name, *args, **kwargs):
        if name == "jieba":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jieba)
    with pytest.raises(HeadprofError, match="pip install jieba"):
        M.qa_f1_zh("北京", "北京")


def test_longbench_scorer():
    assert M.longbench_score("hotpotqa", ["The cat sat"], [["dog", "cat sat down"]]) == 80.0  # best over answers
    assert M.longbench_score("trec", ["\nLocation\nHuman"], [["Location"]], TREC) == 100.0  # first line only
    assert M.classification("\nLocation\nHuman", "Location", all_classes=TREC) == 0.5
    assert M.longbench_score("hotpotqa", ["The cat sat", ""], [["cat sat down"], ["cat"]]) == 40.0
    with pytest.raises(HeadprofError, match="unknown LongBench dataset"):
        M.longbench_score("nope", ["x"], [["x"]])


@pytest.mark.parametrize(
    "case, fn, preds, refs, expected",
    [
        ("M1", M.string_match_all, ["The numbers are 123 and 456"], [["123", "456", "789"]], 66.67),
        ("M2", M.string_match_part, ["Paris"], [["paris", "London"]], 100.0),
        ("M3", M.string_match_all, ["ABC-def"], [["abc-DEF"]], 100.0),
        ("M4", M.string_match_all, ["12345"], [["234"]], 100.0),
        ("M5", M.string_match_all, ["a b", "c"], [["a", "b"], ["d"]], 50.0),
        ("M6", M.string_match_part, ["London, Paris", "x"], [["paris", "rome"], ["rome"]], 50.0),
        ("M7", M.string_match_all, ["1. apple 2. pear"], [["apple", "pear", "plum"]], 66.67),
    ],
)
def test_ruler_string_match(case, fn, preds, refs, expected):
    assert fn(preds, refs) == expected, case


def test_ruler_postprocess():
    assert M.ruler_postprocess(" 12\t34\n") == "12\n34"
    assert M.string_match_all([M.ruler_postprocess("12\n34")], [["1234"]]) == 0.0
    assert M.string_match_all([M.ruler_postprocess("12\n34", control="")], [["1234"]]) == 100.0  # kvpress


def test_score_prediction_dispatch():
    assert score_prediction("string_match_all", "niah_multivalue", " 1, 2\n", ["1", "2", "3", "4"]) == 0.5
    assert score_prediction("classification", "trec", "\nLocation\nHuman", ["Location"], TREC) == 1.0
    assert score_prediction("qa_f1", "hotpotqa", "The cat sat", ["dog", "cat sat down"]) == pytest.approx(0.8)


def test_longbench_tables_match_the_reference():
    digest = hashlib.sha256(json.dumps(DATASET_PROMPT, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    # sha256 of LB@2e00731 LongBench/config/dataset2prompt.json, loaded and dumped the same way
    assert digest == "e7d865d712fe45e2455f5e864ac474001d7758d68d349e76ffbcdd382483358f"
    assert set(DATASET_MAXLEN) == set(M.DATASET_METRIC) == set(DATASET_PROMPT) and len(DATASET_PROMPT) == 21
    assert canonical_dataset("hotpotqa_e") == "hotpotqa" and canonical_dataset("nope_e") is None
