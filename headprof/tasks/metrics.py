"""Task metrics of RULER and LongBench, as pure functions of strings (standard library only).

RULER (NVIDIA/RULER @ c3f5e3b, scripts/eval/synthetic/constants.py and scripts/eval/evaluate.py) scores a
prediction by case-insensitive substring tests against its references: `string_match_all` (the share of
references found; every synthetic task) and `string_match_part` (any reference found; its QA tasks).

LongBench v1 (THUDM/LongBench @ 2e00731, LongBench/metrics.py and eval.py) scores one prediction against one
gold answer with the metric of the row's dataset and keeps the best over the gold answers. The functions
reproduce the reference behaviour, quirks included, because published numbers were produced with it:
- `rouge_l` is the summary-level ROUGE-L F of the `rouge` package (pltrdy, 1.0.1) that LongBench calls:
  sentences split on ".", case-sensitive, and the union LCS counts each distinct word once.
  The reference reconstructs the LCS recursively and so returns 0 (RecursionError) for a sentence pair of
  about 1000+ words; here the reconstruction is iterative and scores such pairs.
- `classification` keeps the reference's loop that removes from a list while iterating it (it skips the
  class after each removed one).
- `code_sim` is fuzzywuzzy's `fuzz.ratio` with python-Levenshtein installed (the indel ratio
  2*LCS/(len a + len b) on characters, rounded to a whole percent); without python-Levenshtein fuzzywuzzy
  falls back to difflib, which differs on ~13% of short string pairs.
Chinese metrics need `jieba` (imported only when a Chinese dataset is scored).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from headprof.errors import HeadprofError

# ---------------------------------------------------------------- RULER

_CONTROL = re.compile(r"[\x00-\x1f]")


def ruler_postprocess(prediction: str, control: str = "\n") -> str:
    """RULER's clean-up: strip, every control character (newline, tab...) -> "\\n", strip again.

    kvpress replaces them by "" instead (`control=""`), which joins "12\\n34" into "1234".
    """
    return _CONTROL.sub(control, prediction.strip()).strip()


def string_match_all_one(prediction: str, references: Sequence[str]) -> float:
    """Share of the references that occur in the prediction (case-insensitive substring: "234" is in "12345")."""
    text = prediction.lower()
    return sum(str(ref).lower() in text for ref in references) / len(references)


def string_match_part_one(prediction: str, references: Sequence[str]) -> float:
    """1.0 when any reference occurs in the prediction (case-insensitive substring), else 0.0."""
    text = prediction.lower()
    return float(any(str(ref).lower() in text for ref in references))


def _ruler_mean(
    one: Callable[[str, Sequence[str]], float], predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> float:
    if len(predictions) != len(references) or not predictions:
        raise HeadprofError("need one reference list per prediction, and at least one prediction")
    return round(sum(one(p, r) for p, r in zip(predictions, references)) / len(predictions) * 100, 2)


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER's task score in percent (2 decimals): mean over samples of `string_match_all_one`."""
    return _ruler_mean(string_match_all_one, predictions, references)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER's QA task score in percent (2 decimals): mean over samples of `string_match_part_one`."""
    return _ruler_mean(string_match_part_one, predictions, references)


# ---------------------------------------------------------------- LongBench: QA F1

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_ZH_PUNCT = _PUNCT | set(
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》"
    "「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)


def normalize_answer(text: str) -> str:
    """LongBench/SQuAD: lower-case, delete ASCII punctuation, articles -> " ", collapse whitespace.

    Punctuation goes before the articles, so "well-known" becomes "wellknown" (one token). Unlike
    `headprof.metrics.normalize_answer`, curly quotes are kept: they are not in `string.punctuation`.
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def normalize_zh_answer(text: str) -> str:
    """LongBench's Chinese normalisation: lower-case, delete ASCII and Chinese punctuation, delete all whitespace."""
    return "".join("".join(ch for ch in text.lower() if ch not in _ZH_PUNCT).split())


def f1_tokens(prediction: Sequence[str], gold: Sequence[str]) -> float:
    """F1 of two token lists by multiset overlap; 0 when nothing is shared (including either list empty)."""
    same = sum((Counter(prediction) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, gold: str, **_: Any) -> float:
    """Token F1 after `normalize_answer` (narrativeqa, qasper, multifieldqa_en, hotpotqa, 2wikimqa, musique,
    triviaqa; and headprof's fallback for rows of an unknown dataset)."""
    return f1_tokens(normalize_answer(prediction).split(), normalize_answer(gold).split())


def _jieba_cut(text: str) -> list[str]:
    try:
        import jieba
    except ImportError:
        raise HeadprofError("Chinese LongBench datasets need the jieba tokenizer (pip install jieba)") from None
    return list(jieba.cut(text, cut_all=False))


def qa_f1_zh(prediction: str, gold: str, **_: Any) -> float:
    """Token F1 over jieba words, each normalised with `normalize_zh_answer`, empty ones dropped (multifieldqa_zh)."""
    pred = [t for t in map(normalize_zh_answer, _jieba_cut(prediction)) if t]
    ref = [t for t in map(normalize_zh_answer, _jieba_cut(gold)) if t]
    return f1_tokens(pred, ref)


# ---------------------------------------------------------------- LongBench: ROUGE-L


def _sentences(text: str) -> list[list[str]]:
    """pltrdy rouge: split on ".", drop empty pieces, collapse whitespace inside each, words = split on " "."""
    return [" ".join(piece.split()).split(" ") for piece in text.split(".") if piece]


def _lcs_words(ref: Sequence[str], hyp: Sequence[str]) -> set[str]:
    """Distinct words of one LCS of `ref` and `hyp`, traced back with the `rouge` package's tie rule:
    step back in `ref` only when that cell is strictly larger, else step back in `hyp`."""
    rows, cols = len(ref), len(hyp)
    table = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(1, rows + 1):
        above, row, word = table[i - 1], table[i], ref[i - 1]
        for j in range(1, cols + 1):
            row[j] = above[j - 1] + 1 if word == hyp[j - 1] else max(above[j], row[j - 1])
    words: set[str] = set()
    i, j = rows, cols
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            words.add(ref[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def rouge_l(prediction: str, gold: str, **_: Any) -> float:
    """Summary-level ROUGE-L F as LongBench computes it (gov_report, qmsum, multi_news, samsum).

    m, n = distinct words of the gold and the prediction; the union over gold sentences r and predicted
    sentences c of the words of LCS(r, c) is counted as a set (a repeated word counts once); R = |union|/m,
    P = |union|/n, F = 2PR/(P + R + 1e-8). No sentence on either side (empty, or only dots) -> 0.0, as the
    reference's exception handler gives.
    """
    hyp, ref = _sentences(prediction), _sentences(gold)
    if not hyp or not ref:
        return 0.0
    m = len({w for sentence in ref for w in sentence})
    n = len({w for sentence in hyp for w in sentence})
    union: set[str] = set()
    for ref_sentence in ref:
        for hyp_sentence in hyp:
            union |= _lcs_words(ref_sentence, hyp_sentence)
    recall, precision = len(union) / m, len(union) / n
    return 2.0 * (precision * recall) / (precision + recall + 1e-8)


def rouge_l_zh(prediction: str, gold: str, **_: Any) -> float:
    """`rouge_l` over jieba words joined by spaces (dureader, vcsum)."""
    return rouge_l(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(gold)))


# ---------------------------------------------------------------- LongBench: classification, retrieval, count


def classification(prediction: str, gold: str, all_classes: Sequence[str] | None = None, **_: Any) -> float:
    """1/#matched classes when the gold class is among the classes found (case-sensitive substrings) in the
    prediction, else 0 (trec, lsht). Classes that are substrings of the gold label are dropped from the
    matches first, but, as in the reference, the class right after each dropped one is not examined."""
    matched = [name for name in all_classes or () if name in prediction]
    position = 0
    while position < len(matched):
        name = matched[position]
        position += 1
        if name in gold and name != gold:
            matched.remove(name)  # the next class slides into `position` and is skipped
    return 1.0 / len(matched) if gold in matched else 0.0


def _share_equal(numbers: Sequence[str], target: str) -> float:
    return sum(number == target for number in numbers) / len(numbers) if numbers else 0.0


def retrieval(prediction: str, gold: str, **_: Any) -> float:
    """Share of the numbers in the prediction that equal the gold paragraph number (passage_retrieval_en)."""
    found = re.findall(r"Paragraph (\d+)", gold)
    if not found:
        raise HeadprofError(f"passage retrieval answers must name a paragraph ('Paragraph 3'), got {gold!r}")
    return _share_equal(re.findall(r"\d+", prediction), found[0])


def retrieval_zh(prediction: str, gold: str, **_: Any) -> float:
    """`retrieval` with the Chinese paragraph label 段落N (passage_retrieval_zh)."""
    found = re.findall(r"段落(\d+)", gold)
    if not found:
        raise HeadprofError(f"passage retrieval answers must name a paragraph ('段落3'), got {gold!r}")
    return _share_equal(re.findall(r"\d+", prediction), found[0])


def count(prediction: str, gold: str, **_: Any) -> float:
    """Share of the numbers in the prediction that equal the gold count (passage_count)."""
    return _share_equal(re.findall(r"\d+", prediction), str(gold))


# ---------------------------------------------------------------- LongBench: code similarity


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings (characters), O(len a * len b)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for ch in a:
        current = [0]
        for j, other in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if ch == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy 0.18 `fuzz.ratio` with python-Levenshtein: equal -> 100 (checked first), either empty -> 0,
    else round(100 * 2*LCS/(len a + len b)) (the indel ratio; Python's round, half to even)."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * 2 * lcs_length(a, b) / (len(a) + len(b))))


def code_sim(prediction: str, gold: str, **_: Any) -> float:
    """`fuzz_ratio` / 100 of the first predicted line without "`", "#" or "//" (not stripped) and the gold
    line (lcc, repobench-p); "" when every line has one of them."""
    lines = prediction.lstrip("\n").split("\n")
    line = next((x for x in lines if "`" not in x and "#" not in x and "//" not in x), "")
    return fuzz_ratio(line, gold) / 100


# ---------------------------------------------------------------- LongBench: datasets

METRICS: dict[str, Callable[..., float]] = {
    "qa_f1": qa_f1,
    "qa_f1_zh": qa_f1_zh,
    "rouge": rouge_l,
    "rouge_zh": rouge_l_zh,
    "classification": classification,
    "retrieval": retrieval,
    "retrieval_zh": retrieval_zh,
    "count": count,
    "code_sim": code_sim,
}

# LongBench eval.py dataset2metric.
DATASET_METRIC: dict[str, str] = {
    **dict.fromkeys(
        ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique", "triviaqa"), "qa_f1"
    ),
    "multifieldqa_zh": "qa_f1_zh",
    **dict.fromkeys(("gov_report", "qmsum", "multi_news", "samsum"), "rouge"),
    **dict.fromkeys(("dureader", "vcsum"), "rouge_zh"),
    **dict.fromkeys(("trec", "lsht"), "classification"),
    "passage_retrieval_en": "retrieval",
    "passage_retrieval_zh": "retrieval_zh",
    "passage_count": "count",
    **dict.fromkeys(("lcc", "repobench-p"), "code_sim"),
}

# eval.py: these datasets' few-shot prompts invite the model to go on with more examples, so only the first
# line of the prediction (after leading newlines) is scored.
FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht"})


def longbench_sample_score(
    metric: str,
    prediction: str,
    answers: Sequence[str],
    all_classes: Sequence[str] | None = None,
    first_line: bool = False,
) -> float:
    """One row's score in [0, 1]: the best of `metric` over the gold answers (0.0 when none scores)."""
    fn = METRICS[metric]
    if first_line:
        prediction = prediction.lstrip("\n").split("\n")[0]
    best = 0.0
    for gold in answers:
        best = max(best, fn(prediction, gold, all_classes=all_classes))
    return best


def longbench_score(
    dataset: str, predictions: Sequence[str], answers: Sequence[Sequence[str]], all_classes: Sequence[str] | None = None
) -> float:
    """LongBench's `scorer`: the dataset's metric, first-line rule, best over answers, mean x 100, 2 decimals."""
    if dataset not in DATASET_METRIC:
        raise HeadprofError(f"unknown LongBench dataset '{dataset}'")
    if len(predictions) != len(answers) or not predictions:
        raise HeadprofError("need one answer list per prediction, and at least one prediction")
    total = sum(
        longbench_sample_score(DATASET_METRIC[dataset], p, a, all_classes, dataset in FIRST_LINE_DATASETS)
        for p, a in zip(predictions, answers)
    )
    return round(100 * total / len(predictions), 2)
