"""Generated evaluation needles: independent of the scoring needles by text similarity, splits that share nothing,
a haystack other than the scoring one, deterministic probes."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict

import pytest

from headprof import needlegen as G
from headprof.metrics import normalize_answer
from headprof.probes import Probe, load_haystack, load_needles

from helpers import NEEDLES

# Word-sequence similarity (difflib ratio over normalised words) of a generated needle or question to its nearest
# scoring needle stays under these; the old packaged evaluation needles, paraphrases of scoring needles ("The access
# code for the Hollin gate is ..." <-> "The secret code for the Orion vault is ..."), reach 0.6 and 0.82.
NEEDLE_SIMILARITY = 0.4
QUESTION_SIMILARITY = 0.55
ANSWER_JACCARD = 0.4  # character 3-gram Jaccard of normalised answers


def _words(text: str) -> list[str]:
    return normalize_answer(text).split()


def _similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, _words(a), _words(b)).ratio()


def _grams(text: str, k: int = 3) -> set[str]:
    text = normalize_answer(text)
    return {text[i : i + k] for i in range(max(1, len(text) - k + 1))}


def _jaccard(a: str, b: str) -> float:
    ga, gb = _grams(a), _grams(b)
    return len(ga & gb) / len(ga | gb)


def _scoring():
    return [n for kind in ("retrieval", "reasoning") for n in load_needles(NEEDLES / f"needles-{kind}.jsonl")]


def _all_generated():
    return {split: G.generate_needles(split, G.max_count(split)) for split in G.SPLITS}


def test_generated_needles_are_not_paraphrases_of_scoring_needles():
    scoring = _scoring()
    scoring_answers = {normalize_answer(n.answer) for n in scoring}
    scoring_text = " ".join(f"{n.needle} {n.question}" for n in scoring)
    for needles in _all_generated().values():
        for n in needles:
            assert max(_similarity(n.needle, m.needle) for m in scoring) < NEEDLE_SIMILARITY, n.needle
            assert max(_similarity(n.question, m.question) for m in scoring) < QUESTION_SIMILARITY, n.question
            assert max(_jaccard(n.answer, m.answer) for m in scoring) < ANSWER_JACCARD, n.answer
            assert normalize_answer(n.answer) not in scoring_answers
            # no answer word is a scoring answer word, and no answer occurs in a scoring needle
            assert not set(_words(n.answer)) & {w for m in scoring for w in _words(m.answer)}, n.answer
            assert not re.search(rf"\b{re.escape(n.answer)}\b", scoring_text, re.IGNORECASE), n.answer
    for split in G.SPLITS:
        for name in G.entities(split):
            assert not re.search(rf"\b{re.escape(name)}\b", scoring_text), name


def test_the_similarity_check_sees_the_old_paraphrases():
    """The thresholds are not vacuous: the paraphrased evaluation needles this generator replaces fail them."""
    scoring = _scoring()
    old = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")
    assert max(_similarity(n.needle, m.needle) for n in old for m in scoring) >= NEEDLE_SIMILARITY
    assert max(_similarity(n.question, m.question) for n in old for m in scoring) >= QUESTION_SIMILARITY


def test_splits_share_no_template_entity_value_or_haystack_order():
    generated = _all_generated()
    validation, test = generated["validation"], generated["test"]
    assert {t.topic for t in G.TEMPLATES["validation"]}.isdisjoint(t.topic for t in G.TEMPLATES["test"])
    assert set(G.entities("validation")).isdisjoint(G.entities("test"))
    assert {normalize_answer(n.answer) for n in validation}.isdisjoint(normalize_answer(n.answer) for n in test)
    for a in validation:
        assert max(_similarity(a.needle, b.needle) for b in test) < NEEDLE_SIMILARITY, a.needle
    hay_v, hay_t = G.haystack("validation"), G.haystack("test")
    assert hay_v != hay_t and sum(a == b for a, b in zip(hay_v, hay_t)) < len(hay_v) // 10


def test_at_least_forty_distinct_deterministic_needles_per_split():
    for split in G.SPLITS:
        needles = G.generate_needles(split, 40)
        assert len(needles) == 40 == len({n.id for n in needles}) == len({n.needle for n in needles})
        assert len({n.question for n in needles}) == 40  # one entity per needle: every question has one answer
        assert needles == G.generate_needles(split, 40)
        assert needles != G.generate_needles(split, 40, seed=1)
        for n in needles:
            assert n.kind == "retrieval" and n.sentence == n.needle and n.answer in n.needle
    with pytest.raises(G.HeadprofError, match="--count must be between 1 and"):
        G.generate_needles("test", G.max_count("test") + 1)
    with pytest.raises(G.HeadprofError, match="unknown split"):
        G.haystack("train")


def test_probes_sit_in_the_generated_haystack_not_the_scoring_one(tokenizer):
    probes = G.build_eval_probes(tokenizer, "test", count=40, lengths=(1024, 4096), depths=(25, 75))
    assert len(probes) == 160 and len({p.needle_id for p in probes}) == 40
    assert {(p.length, p.depth) for p in probes} == {(1024, 25.0), (1024, 75.0), (4096, 25.0), (4096, 75.0)}
    for p in probes:
        assert Probe.from_dict(json.loads(json.dumps(asdict(p)))) == p
        assert 0.8 * p.length <= p.n_tokens <= p.length
    builtin = load_haystack("builtin")[:50]
    prompt = probes[-1].prompt
    assert not any(sentence in prompt for sentence in builtin)
    assert sum(sentence in prompt for sentence in G.haystack("test")) > 100
    again = G.build_eval_probes(tokenizer, "test", count=40, lengths=(1024, 4096), depths=(25, 75))
    assert again == probes


def test_cli_builds_a_split_and_refuses_mixed_sources(cli, workdir):
    ok = cli("probes", "build", "--generated", "--split", "validation", "--count", "3", "--lengths", "512", "--json")
    assert ok.code == 0, ok.stderr
    assert ok.json()["count"] == 6 and ok.json()["probes"].endswith("eval-probes-validation.jsonl")
    both = cli("probes", "build", "--generated", "--eval")
    assert both.code != 0 and both.stderr.strip().splitlines() == [
        "error: give one of --needles, --eval and --generated"
    ]
    many = cli("probes", "build", "--generated", "--count", "500")
    assert many.code != 0 and "error: --count must be between 1 and" in many.stderr
