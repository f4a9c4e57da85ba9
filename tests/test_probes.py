"""Probe building: exact span location on two tokenizer families, depth placement, determinism, validation."""

from __future__ import annotations

import json
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
        span_text = tok.decode(enc.prompt_ids[enc.span[0] : enc.span[1]]).strip()
        assert span_text == probe.prompt[slice(*probe.span_chars)]
        needle_text = tok.decode(enc.prompt_ids[enc.needle[0] : enc.needle[1]]).strip()
        assert needle_text == probe.prompt[slice(*probe.needle_chars)]
        assert enc.needle[0] <= enc.span[0] < enc.span[1] <= enc.needle[1]
        if probe.kind == "reasoning":  # the span is one sentence of the four, not the whole needle
            assert enc.span[1] - enc.span[0] < (enc.needle[1] - enc.needle[0]) / 2


def test_chat_template_used_when_present(tokenizer, unigram_tokenizer, needles):
    chat = build_probes(needles[:1], tokenizer, lengths=(300,), depths=(50,))[0]
    plain = build_probes(needles[:1], unigram_tokenizer, lengths=(300,), depths=(50,))[0]
    assert chat.templated and "<|im_start|>user" in chat.prompt and chat.prompt.endswith("assistant\n")
    assert not plain.templated and plain.prompt.endswith("Answer:") and plain.target.startswith(" ")


def test_lengths_and_depth_placement(tokenizer, needles):
    probes = build_probes(needles[:2], tokenizer, lengths=(600, 1200), depths=(0, 50, 100), seed=1)
    for probe in probes:
        assert probe.length - 80 <= probe.n_tokens <= probe.length
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
    assert {"prompt", "needle_chars", "span_chars", "question", "answer", "kind", "length", "depth", "seed"} <= set(
        ds.column_names
    )
    assert ds[0]["span_chars"] == list(probes[0].span_chars)


def test_needle_longer_than_context_is_an_error(tokenizer, needles):
    with pytest.raises(HeadprofError, match=r"probe .*@40@50: .*more than the context length 40"):
        build_probes(needles[:1], tokenizer, lengths=(40,), depths=(50,))


def test_length_beyond_context_window_is_an_error(tokenizer, needles):
    with pytest.raises(HeadprofError, match="exceeds the model's context window"):
        build_probes(needles[:1], tokenizer, lengths=(9000,), depths=(50,), max_context=8192)


def test_unlocatable_span_names_the_probe(tokenizer, needles):
    probe = build_probes(needles[:1], tokenizer, lengths=(300,), depths=(50,))[0]
    broken = replace(probe, span_chars=(len(probe.prompt) + 5, len(probe.prompt) + 9))
    with pytest.raises(HeadprofError, match=f"probe {probe.id}: scoring span"):
        encode_probe(tokenizer, broken)


@pytest.mark.parametrize(
    "row, message",
    [
        ("not json", "line 1: not valid JSON"),
        (json.dumps({"needle": "A b c.", "question": "Q?", "kind": "retrieval"}), "missing or empty field 'answer'"),
        (json.dumps({"needle": "A b c.", "question": "Q?", "answer": "b", "kind": "maths"}), "kind must be one of"),
        (
            json.dumps({"needle": "A b c.", "question": "Q?", "answer": "b", "kind": "retrieval", "span": "zzz"}),
            "span is not a substring",
        ),
        (
            json.dumps({"needle": "A b c.", "question": "Q?", "answer": "q", "kind": "retrieval"}),
            "does not occur in the span",
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
    assert sum(n.kind == "retrieval" for n in scoring.values()) >= 10
    assert sum(n.kind == "reasoning" for n in scoring.values()) >= 10
    assert not {n.needle for n in scoring.values()} & {n.needle for n in evaluation.values()}
    for needle in scoring.values():
        if needle.kind == "reasoning":
            assert needle.span != needle.needle and needle.span in needle.needle


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
