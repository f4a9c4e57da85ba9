"""Answer metrics shared by scoring (which generated answers count) and evaluation (accuracy).

Normalisation follows SQuAD/LongBench: lower-case, drop punctuation and the articles a/an/the,
collapse whitespace. Punctuation is deleted, not replaced by a space (SQuAD's rule), so
"cobalt-4417" normalises to "cobalt4417": an answer that writes "cobalt 4417" is not an exact
match, and gets no F1 credit for that token either.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}“”‘’]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD/LongBench normalisation: lower-case, no punctuation or articles, single spaces."""
    text = _PUNCT.sub("", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_tokens(text: str) -> list[str]:
    """Tokens of the normalised answer, for F1 and recall."""
    return normalize_answer(text).split()


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall (multiset overlap), as in SQuAD and HeadKV."""
    pred, ref = answer_tokens(prediction), answer_tokens(gold)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_recall(prediction: str, gold: str) -> float:
    """Share of the gold answer's tokens found in the prediction (ROUGE-1 recall, as the Retrieval-head code)."""
    pred, ref = Counter(answer_tokens(prediction)), answer_tokens(gold)
    if not ref:
        return 0.0
    return sum((pred & Counter(ref)).values()) / len(ref)


def exact_match(prediction: str, gold: str) -> bool:
    """The normalised gold answer occurs in the normalised prediction, on word boundaries."""
    ref = normalize_answer(gold)
    return bool(ref) and f" {ref} " in f" {normalize_answer(prediction)} "


@dataclass(frozen=True)
class Criterion:
    """When a generated answer counts: `metric(answer, reference) > threshold` (0.5), the reference being the
    probe's target sentence or its gold answer."""

    metric: Callable[[str, str], float]
    reference: str  # "sentence" or "answer"
    doc: str


def contains_answer(prediction: str, gold: str) -> float:
    """1.0 when the normalised gold answer occurs in the normalised prediction (`exact_match`), else 0.0."""
    return float(exact_match(prediction, gold))


CRITERIA = {
    # The default: the answer value itself must be in the output. F1 against the whole sentence counts an answer
    # that repeats the sentence's frame with a wrong value as right ("Last spring, Halvard Quenby moved to the
    # city of Oslo." has F1 0.89 against the sentence with Tromsund).
    "answer": Criterion(contains_answer, "answer", "the normalised gold answer occurs in the answer"),
    # HeadKV R2 (retrieval_head_detection_r2.py, FYYFU/HeadKV@0862a09): qa_f1_score(response, answer) > 0.5
    # with `answer` the whole correct sentence (`real_needle`).
    "f1": Criterion(token_f1, "sentence", "token F1 against the target sentence > 0.5 (HeadKV)"),
    # Retrieval-head (retrieval_head_detection.py, nightdessert/Retrieval_Head@3ac171a): ROUGE-1 recall of the
    # answer part (`real_needle`) > 0.5; headprof counts tokens without the Porter stemmer.
    "recall": Criterion(answer_recall, "answer", "recall of the gold answer's tokens > 0.5 (Retrieval-head)"),
    "f1-answer": Criterion(token_f1, "answer", "token F1 against the gold answer > 0.5"),
}
