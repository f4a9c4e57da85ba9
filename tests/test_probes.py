"""Probe building: exact span location on two tokenizer families, depth placement, determinism, validation."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from headprof.errors import HeadprofError
from headprof.probes import (
    build_probes,
    clean_haystack,
    encode_probe,
    load_haystack,
    load_needles,
    load_probes,
    probes_sha256,
    write_probes,
)


@pytest.fixture(scope="module")
def unigram_tokenizer():
    """A SentencePiece-style Unigram tokenizer (Llama-2/Mistral family: Metaspace, BOS), trained here, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from headprof.probes import load_needles

    from helpers import NEEDLES

    texts = load_haystack()[:1500] + [
        n.needle + " " + n.question
        for f in ("retrieval", "reasoning")
        for n in load_needles(NEEDLES / f"needles-{f}.jsonl")
    ]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        texts, trainers.UnigramTrainer(vocab_size=3000, unk_token="<unk>", special_tokens=["<unk>", "<s>", "</s>"])
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("family", ["smollm2-bpe", "unigram-metaspace"])
def test_span_tokens_are_exactly_the_span(family, tokenizer, unigram_tokenizer, needles):
    tok = tokenizer if family == "smollm2-bpe" else unigram_tokenizer
    probes = build_probes(needles, tok, lengths=(400,), depths=(0, 35, 100), seed=3)
    for probe in probes:
        enc = encode_probe(tok, probe)
        for name, chars in (("answer", probe.answer_chars), ("sentence", probe.sentence_chars)):
            span = enc.span(name)  # the tokens that overlap the characters (a token may run past them: "7.")
            covered = tok.decode(enc.prompt_ids[span[0] : span[1]]).strip()
            assert probe.prompt[slice(*chars)] in covered and len(covered) <= len(probe.prompt[slice(*chars)]) + 2
        assert probe.prompt[slice(*probe.answer_chars)].lower() == probe.answer.lower()
        needle_text = tok.decode(enc.prompt_ids[enc.needle[0] : enc.needle[1]]).strip()
        assert needle_text == probe.prompt[slice(*probe.needle_chars)]
        answer, sentence = enc.span("answer"), enc.span("sentence")
        assert enc.needle[0] <= sentence[0] <= answer[0] < answer[1] <= sentence[1] <= enc.needle[1]
        assert answer[1] - answer[0] < sentence[1] - sentence[0]  # the answer, not the words before it
        if probe.kind == "reasoning":  # the sentence is one of the four, not the whole needle
            assert sentence[1] - sentence[0] < (enc.needle[1] - enc.needle[0]) / 2
        # the target's tokens as they follow the prompt: the answer inside it has the needle's tokens
        steps = enc.answer_steps
        assert enc.target_ids[steps[0] : steps[1]] == enc.prompt_ids[answer[0] : answer[1]]
        assert enc.target_keys[steps[0] : steps[1]] == enc.prompt_keys[answer[0] : answer[1]]


def test_chat_template_used_when_present(tokenizer, unigram_tokenizer, needles):
    chat = build_probes(needles[:1], tokenizer, lengths=(300,), depths=(50,))[0]
    plain = build_probes(needles[:1], unigram_tokenizer, lengths=(300,), depths=(50,))[0]
    assert chat.templated and "<|im_start|>user" in chat.prompt and chat.prompt.endswith("assistant\n")
    assert not plain.templated and plain.prompt.endswith("Answer:") and plain.target.startswith(" ")


def test_lengths_and_depth_placement(tokenizer, needles):
    probes = build_probes(needles, tokenizer, lengths=(600, 1200), depths=(0, 50, 100), seed=1)
    for probe in probes:
        assert probe.length - 120 <= probe.n_tokens <= probe.length
        enc = encode_probe(tokenizer, probe)
        assert len(enc.prompt_ids) == probe.n_tokens
        context_start = probe.prompt.index("user\n") + len("user\n")
        context_end = probe.prompt.index("\n\nQuestion:")
        relative = (probe.needle_chars[0] - context_start) / (context_end - context_start)
        if probe.depth == 0:
            assert probe.needle_chars[0] == context_start
        elif probe.depth == 100:
            assert probe.needle_chars[1] == context_end
        else:
            assert abs(relative - 0.5) < 0.1, relative
        # sentence boundary: the needle is preceded by a sentence end (or starts the context)
        before = probe.prompt[context_start : probe.needle_chars[0]].rstrip()
        assert before == "" or before[-1] in ".!?"


def test_probes_at_one_position_share_the_haystack_before_the_needle(tokenizer, needles):
    """One haystack order per length: at a (length, depth) every needle follows the same text, and a shallower
    depth's text before the needle is a prefix of a deeper one's (so its KV can be computed once)."""
    probes = build_probes(needles, tokenizer, lengths=(500, 900), depths=(10, 50, 90), seed=2)
    for length in (500, 900):
        prefixes = {}
        for depth in (10, 50, 90):
            here = [p for p in probes if p.length == length and p.depth == depth]
            before = {p.prompt[: p.needle_chars[0]] for p in here}
            assert len(here) == len(needles) and len(before) == 1
            prefixes[depth] = before.pop()
            ids = {tuple(tokenizer(p.prompt, add_special_tokens=False)["input_ids"][:20]) for p in here}
            assert len(ids) == 1
        assert prefixes[90].startswith(prefixes[50]) and prefixes[50].startswith(prefixes[10])
        assert len(prefixes[10]) < len(prefixes[50]) < len(prefixes[90])
        after = {p.prompt[p.needle_chars[1] : p.prompt.index("\n\nQuestion:")] for p in probes if p.length == length}
        assert len(after) == 3  # and the same text after the needle, per depth


def test_deterministic_under_seed(tokenizer, needles):
    first = build_probes(needles, tokenizer, lengths=(300,), depths=(25, 75), seed=7)
    again = build_probes(needles, tokenizer, lengths=(300,), depths=(25, 75), seed=7)
    other = build_probes(needles, tokenizer, lengths=(300,), depths=(25, 75), seed=8)
    assert probes_sha256(first) == probes_sha256(again)
    assert [p.prompt for p in first] == [p.prompt for p in again]
    assert [p.prompt for p in first] != [p.prompt for p in other]


def test_probe_file_round_trip_and_datasets(tmp_path, tokenizer, needles):
    probes = build_probes(needles, tokenizer, lengths=(300,), depths=(50,))
    path = tmp_path / "p.jsonl"
    write_probes(path, probes)
    assert load_probes(path) == probes
    import datasets

    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    assert len(ds) == len(probes)
    columns = {"prompt", "needle_chars", "sentence_chars", "answer_chars", "question", "answer", "kind", "length"}
    assert columns <= set(ds.column_names)
    assert ds[0]["answer_chars"] == list(probes[0].answer_chars)


def test_needle_longer_than_context_is_an_error(tokenizer, needles):
    with pytest.raises(HeadprofError, match=r"probe .*@40@50: .*more than the context length 40"):
        build_probes(needles[:1], tokenizer, lengths=(40,), depths=(50,))


def test_length_beyond_context_window_is_an_error(tokenizer, needles):
    with pytest.raises(HeadprofError, match="exceeds the model's context window"):
        build_probes(needles[:1], tokenizer, lengths=(9000,), depths=(50,), max_context=8192)


def test_unlocatable_span_names_the_probe(tokenizer, needles):
    probe = build_probes(needles[:1], tokenizer, lengths=(300,), depths=(50,))[0]
    broken = replace(probe, answer_chars=(len(probe.prompt) + 5, len(probe.prompt) + 9))
    with pytest.raises(HeadprofError, match=f"probe {probe.id}: scoring span"):
        encode_probe(tokenizer, broken)


@pytest.mark.parametrize(
    "row, message",
    [
        ("not json", "line 1: not valid JSON"),
        (json.dumps({"needle": "A b c.", "question": "Q?", "kind": "retrieval"}), "missing or empty field 'answer'"),
        (json.dumps({"needle": "A b c.", "question": "Q?", "answer": "b", "kind": "maths"}), "kind must be one of"),
        (
            json.dumps({"needle": "A b c.", "question": "Q?", "answer": "b", "kind": "retrieval", "sentence": "zzz"}),
            "the sentence must occur exactly once in the needle",
        ),
        (
            json.dumps({"needle": "A b c.", "question": "Q?", "answer": "q", "kind": "retrieval"}),
            "does not occur in the sentence",
        ),
    ],
)
def test_needle_file_validation(tmp_path, row, message):
    path = tmp_path / "n.jsonl"
    path.write_text(row + "\n")
    with pytest.raises(HeadprofError, match=message):
        load_needles(path)


def test_needle_file_missing_duplicate_and_empty(tmp_path):
    with pytest.raises(HeadprofError, match="not found"):
        load_needles(tmp_path / "nope.jsonl")
    row = json.dumps({"id": "x", "needle": "A b c.", "question": "Q?", "answer": "b", "kind": "retrieval"})
    (tmp_path / "dup.jsonl").write_text(row + "\n" + row + "\n")
    with pytest.raises(HeadprofError, match="duplicate needle id 'x'"):
        load_needles(tmp_path / "dup.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(HeadprofError, match="has no needles"):
        load_needles(tmp_path / "empty.jsonl")


def test_committed_needle_sets_are_valid_and_disjoint():
    from helpers import NEEDLES

    scoring = {n.id: n for k in ("retrieval", "reasoning") for n in load_needles(NEEDLES / f"needles-{k}.jsonl")}
    evaluation = {
        n.id: n for k in ("retrieval", "reasoning") for n in load_needles(NEEDLES / f"eval-needles-{k}.jsonl")
    }
    assert sum(n.kind == "retrieval" for n in scoring.values()) >= 40
    assert sum(n.kind == "reasoning" for n in scoring.values()) >= 40
    assert not {n.needle for n in scoring.values()} & {n.needle for n in evaluation.values()}
    for needles in (scoring, evaluation):
        for needle in needles.values():
            words = needle.sentence.split()
            assert not needle.sentence.lower().startswith(needle.answer.lower())  # the answer is copyable mid-sentence
            assert needle.answer.lower() not in needle.question.lower(), needle.id
            if needle.kind == "reasoning":
                assert needle.sentence != needle.needle and len(words) < len(needle.needle.split()) / 2
        pairs: dict[str, list] = {}
        for needle in needles.values():
            if needle.kind == "reasoning":
                pairs.setdefault(needle.needle, []).append(needle)
        for a, b in pairs.values():
            assert a.answer != b.answer and a.sentence != b.sentence and a.question != b.question
        assert all(len(p) == 2 for p in pairs.values())  # every reasoning needle in both polarities
        # the entity named first in the question is the one named first in the needle in half of the needles
        same_order = []
        for a, _ in pairs.values():
            left, right = _question_entities(a.question)
            same_order.append(a.needle.index(left) < a.needle.index(right))
        assert abs(sum(same_order) - len(same_order) / 2) <= 1, same_order


def _question_entities(question: str) -> list[str]:
    """The two entities a reasoning question compares ("... between Mira and Tomas?", "..., the X or the Y?")."""
    tail = question.rsplit("between ", 1)[1] if "between " in question else question.rsplit(", ", 1)[1]
    return [re.sub(r"^the |'s$", "", part.strip()) for part in re.split(r" and | or ", tail.rstrip("?"))]


def test_haystack_cleaning_and_sources(tmp_path):
    builtin = load_haystack()
    assert len(builtin) > 1000
    assert not any(">>>" in s or "::=" in s or "*" in s for s in builtin)
    prose = "This is a sentence about rivers. It has several more words in it to count.\n\n" * 15
    code = "    def f(x):\n        return x[0] + {'a': 1}\n\n"
    assert clean_haystack(code) == []
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text(prose + code)
    assert len(load_haystack(str(tmp_path / "docs"))) == 30
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(HeadprofError, match="empty or too short"):
        load_haystack(str(tmp_path / "empty.txt"))
    with pytest.raises(HeadprofError, match="not found"):
        load_haystack(str(tmp_path / "missing"))
