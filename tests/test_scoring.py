"""Scoring math on hand-built attention, and capture checked against eager attention on the real model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from headprof.capture import AttentionCapture, attention_rows
from headprof.errors import HeadprofError
from headprof.heads import kv_view
from headprof.metrics import exact_match
from headprof.probe_scores import (
    ScoreConfig,
    _Recorder,
    _strip_eos,
    r2_scores,
    retrieval_scores,
    score_probe,
    step_stats,
)
from headprof.probes import copy_keys, encode_probe


def _rows(spec: list[list[dict[int, float]]], length: int) -> torch.Tensor:
    """Attention rows from {position: weight} dicts, one per head and step."""
    out = torch.zeros(len(spec), len(spec[0]), length)
    for h, steps in enumerate(spec):
        for t, weights in enumerate(steps):
            for pos, w in weights.items():
                out[h, t, pos] = w
    return out


def test_retrieval_score_counts_only_copies_inside_the_span():
    # context tokens: positions 4..6 hold the needle's answer tokens 40, 50, 60
    context = torch.tensor([1, 2, 3, 9, 40, 50, 60, 7, 8, 9])
    answer = torch.tensor([40, 50, 60])
    span = (4, 7)
    rows = _rows(
        [
            [{4: 0.9, 0: 0.1}, {5: 0.8, 1: 0.2}, {6: 0.7, 2: 0.3}],  # copies all three
            [{4: 0.9, 0: 0.1}, {4: 0.6, 5: 0.4}, {0: 0.9, 6: 0.1}],  # right token once, wrong token, outside
            [{9: 0.9, 4: 0.1}, {9: 1.0}, {9: 1.0}],  # token 9 at position 9: outside the span
        ],
        10,
    )
    argmax, _ = step_stats(rows, span)
    scores = retrieval_scores(argmax, answer, context, span)
    assert scores.tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_r2_score_adds_top_k_mass_inside_the_span():
    span = (4, 7)  # k = 3
    rows = _rows(
        [
            [{4: 0.5, 5: 0.2, 0: 0.1, 8: 0.1, 9: 0.1}],  # top-3 = 4 (.5), 5 (.2), then a .1 outside -> (.5+.2)/3
            [{0: 0.4, 1: 0.3, 2: 0.2, 5: 0.1}],  # 5 (.1) is not in the top 3 -> 0
            [{4: 0.3, 5: 0.3, 6: 0.3, 0: 0.1}],  # all three inside -> .9/3
        ],
        10,
    )
    _, mass = step_stats(rows, span)
    assert r2_scores(mass).tolist() == pytest.approx([0.7 / 3, 0.0, 0.3])
    two_steps = torch.cat([rows, rows], dim=1)
    _, mass2 = step_stats(two_steps, span)
    assert r2_scores(mass2).tolist() == pytest.approx([1.4 / 3, 0.0, 0.6])  # summed over answer steps


def test_attention_rows_match_eager_softmax_with_gqa():
    torch.manual_seed(0)
    batch, n_kv, group, total, dim, n_rows = 1, 2, 3, 12, 8, 4
    query = torch.randn(batch, n_kv * group, total, dim)
    key = torch.randn(batch, n_kv, total, dim)
    scaling = dim**-0.5
    rows = attention_rows(query[:, :, -n_rows:], key, scaling)
    full_key = key.repeat_interleave(group, dim=1)  # query head h reads KV head h // group
    logits = query @ full_key.transpose(-1, -2) * scaling
    causal = torch.ones(total, total, dtype=torch.bool).triu(1)
    eager = logits.masked_fill(causal, float("-inf")).softmax(-1)
    torch.testing.assert_close(rows, eager[:, :, -n_rows:])


def test_scores_of_a_model_whose_layer_never_reached_the_capture_are_refused():
    recorder = _Recorder(n_layers=3, n_heads=2, n_steps=4, span=(2, 5))
    rows = torch.softmax(torch.randn(1, 2, 4, 10, generator=torch.Generator().manual_seed(0)), dim=-1)
    recorder(0, rows)
    recorder(2, rows)
    with pytest.raises(HeadprofError, match=r"layers \[1\] never reached"):
        recorder.check_every_layer("tiny")
    recorder(1, rows)
    recorder.check_every_layer("tiny")  # every layer delivered: no error


def test_kv_view_sums_each_group():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 1.0]])
    assert kv_view(scores, 2).tolist() == [[3.0, 7.0], [1.0, 1.0]]
    assert kv_view(scores, 2, "mean").tolist() == [[1.5, 3.5], [0.5, 0.5]]


def test_captured_rows_equal_eager_attention_on_the_model(loaded):
    model = loaded.model
    ids = loaded.tokenizer("The quick brown fox jumps over the lazy dog. " * 6, return_tensors="pt").input_ids
    captured: dict[int, torch.Tensor] = {}
    with torch.no_grad(), AttentionCapture(model):
        with AttentionCapture.rows(5, lambda layer, rows: captured.__setitem__(layer, rows)):
            sdpa_logits = model(ids).logits
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(ids, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    assert sorted(captured) == list(range(loaded.info.n_layers))
    for layer, attn in enumerate(eager.attentions):
        torch.testing.assert_close(captured[layer], attn[:, :, -5:].float(), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(sdpa_logits, eager.logits, atol=1e-3, rtol=1e-3)


def _keys(enc, answer_keys=None):
    """Integer copy keys of prompt + answer (as scoring maps them)."""
    answer_keys = enc.target_keys if answer_keys is None else answer_keys
    table = {k: i for i, k in enumerate(dict.fromkeys(enc.prompt_keys + answer_keys))}
    return torch.tensor([table[k] for k in answer_keys]), torch.tensor(
        [table[k] for k in enc.prompt_keys + answer_keys]
    )


def _captured(loaded, ids: list[int], n: int) -> torch.Tensor:
    """`[L, H, n, T]` captured rows of the last n positions of one forward."""
    rows: dict[int, torch.Tensor] = {}
    with torch.no_grad(), AttentionCapture(loaded.model):
        with AttentionCapture.rows(n, lambda layer, r: rows.__setitem__(layer, r[0])):
            loaded.model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=1)
    return torch.stack([rows[i] for i in range(len(rows))])


def test_copy_keys_ignore_one_leading_space(tokenizer):
    line_start, mid_sentence = (
        tokenizer("The", add_special_tokens=False)["input_ids"],
        tokenizer(" The", add_special_tokens=False)["input_ids"],
    )
    assert line_start != mid_sentence  # byte-level BPE: "The" and "ĠThe" are different ids
    assert copy_keys(tokenizer, line_start) == copy_keys(tokenizer, mid_sentence) == ["The"]
    # a first answer step that copies the needle's " The" counts, though the ids differ
    context = torch.tensor([7, 1, 7])  # keys: position 1 holds the needle's first word
    argmax = torch.tensor([[1]])
    assert retrieval_scores(argmax, torch.tensor([1]), context, (1, 2)).tolist() == [1.0]


def test_teacher_scores_equal_scores_from_eager_attention(loaded, tiny_probes):
    """The whole teacher-mode pipeline against the definition applied to eager T x T attention, for both spans."""
    enc = encode_probe(loaded.tokenizer, tiny_probes[2])  # a reasoning probe
    ids = torch.tensor([enc.prompt_ids + enc.target_ids[:-1]])
    n = len(enc.target_ids)
    loaded.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = loaded.model(ids, output_attentions=True).attentions
    finally:
        loaded.model.set_attn_implementation("sdpa")
    rows = torch.stack([a[0, :, -n:].float() for a in attentions])  # [L, H, n, T]
    for span in ("answer", "sentence"):
        with AttentionCapture(loaded.model):
            result = score_probe(loaded, enc, ScoreConfig(mode="teacher", span=span))
        argmax, mass = step_stats(rows, enc.span(span))
        expected_ret = retrieval_scores(argmax, *_keys(enc), enc.span(span))
        torch.testing.assert_close(result.scores["r2"], r2_scores(mass), atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(result.scores["retrieval"], expected_ret)
        assert result.right and result.scores["r2"].max() > 0.1


def test_answer_span_is_the_answer_and_its_first_step_can_be_a_copy(loaded, tiny_probes):
    """The answer span covers only the answer; the step that produces its first token copies the needle's token."""
    enc = encode_probe(loaded.tokenizer, tiny_probes[0])  # "... Orion vault is cobalt-4417."
    answer, sentence = enc.span("answer"), enc.span("sentence")
    assert loaded.tokenizer.decode(enc.prompt_ids[answer[0] : answer[1]]).strip() == "cobalt-4417"
    assert sentence[0] < answer[0] and answer[1] - answer[0] < (sentence[1] - sentence[0]) / 2
    first = enc.answer_steps[0]  # the step producing " cobalt", read at the position of " is"
    rows = _captured(loaded, enc.prompt_ids + enc.target_ids[:-1], len(enc.target_ids))
    argmax, _ = step_stats(rows, answer)
    answer_keys, context_keys = _keys(enc)
    one_step = retrieval_scores(argmax[..., first : first + 1], answer_keys[first : first + 1], context_keys, answer)
    assert int((one_step > 0).sum()) >= 3  # several heads copy the first answer token
    assert (argmax[..., first] == answer[0]).any()
    with AttentionCapture(loaded.model):
        by_answer = score_probe(loaded, enc, ScoreConfig(span="answer"))
        by_sentence = score_probe(loaded, enc, ScoreConfig(span="sentence"))
        by_reference = score_probe(loaded, enc, ScoreConfig())  # each score on its reference code's span
    assert not torch.equal(by_answer.scores["r2"], by_sentence.scores["r2"])
    assert torch.equal(by_reference.scores["retrieval"], by_answer.scores["retrieval"])
    assert torch.equal(by_reference.scores["r2"], by_sentence.scores["r2"])


def test_generate_mode_stops_at_the_target_length_and_counts_the_answer(loaded, tiny_probes):
    reasoning = [p for p in tiny_probes if p.kind == "reasoning"]
    with AttentionCapture(loaded.model):
        results = [
            score_probe(loaded, encode_probe(loaded.tokenizer, p), ScoreConfig(mode="generate")) for p in tiny_probes
        ]
    for probe, result in zip(tiny_probes, results):
        cap = len(encode_probe(loaded.tokenizer, probe).target_ids)
        assert len(loaded.tokenizer(result.answer, add_special_tokens=False)["input_ids"]) <= cap
        assert result.right == exact_match(result.answer, probe.answer)  # the default criterion: the answer itself
    assert results[0].right  # the embedded model retrieves at 512 tokens
    # this model repeats a reasoning question instead of answering: its answer is cut at the target's length
    cut = [r for p, r in zip(tiny_probes, results) if p.kind == "reasoning" and not r.right]
    assert reasoning and cut
    for result in cut:
        enc = encode_probe(loaded.tokenizer, next(p for p in tiny_probes if p.id == result.probe_id))
        assert len(loaded.tokenizer(result.answer, add_special_tokens=False)["input_ids"]) == len(enc.target_ids)


def test_generate_mode_scores_the_answer_steps_without_the_eos_step(loaded, tiny_probes):
    """With a cap longer than the answer the model ends with EOS; the EOS step is not scored: the scores equal
    the teacher-forced rows of the answer tokens themselves."""
    probe = tiny_probes[0]
    long_cap = replace(probe, target=probe.target + " It was written down long ago by the vault keeper himself.")
    enc = encode_probe(loaded.tokenizer, long_cap)
    with AttentionCapture(loaded.model):
        result = score_probe(loaded, enc, ScoreConfig(mode="generate", span="answer"))
    answer_ids = loaded.tokenizer(result.answer, add_special_tokens=False)["input_ids"]
    assert 0 < len(answer_ids) < len(enc.target_ids)  # stopped by EOS, not by the cap
    rows = _captured(loaded, enc.prompt_ids + answer_ids[:-1], len(answer_ids))
    argmax, mass = step_stats(rows, enc.span("answer"))
    torch.testing.assert_close(result.scores["r2"], r2_scores(mass), atol=1e-4, rtol=1e-3)
    keys = copy_keys(loaded.tokenizer, answer_ids)
    expected = retrieval_scores(argmax, *_keys(enc, keys), enc.span("answer"))
    torch.testing.assert_close(result.scores["retrieval"], expected)
    assert _strip_eos([5, 6, 2, 7], [2]) == [5, 6] and _strip_eos([5, 6], [2]) == [5, 6]


def test_shared_prefixes_give_the_per_probe_scores(loaded, tiny_probes):
    """Probes of one length and depth share the haystack before the needle: its KV runs once, each probe runs
    only the rest, and the captured rows (so the scores) are those of the per-probe path."""
    from headprof.scoring import _prefix_lengths, score_probes

    encoded = {i: encode_probe(loaded.tokenizer, p) for i, p in enumerate(tiny_probes)}
    shared = _prefix_lengths(tiny_probes, encoded, list(encoded))
    assert len(shared) == len(tiny_probes) and min(length for _, length in shared.values()) > 100
    alone = score_probes(loaded, tiny_probes, ScoreConfig(), share_prefixes=False)
    together = score_probes(loaded, tiny_probes, ScoreConfig(), share_prefixes=True)
    # The prefix's K/V come from a forward of another shape, equal to the per-probe path's up to float rounding
    # (~1e-7). r2 sums the top-|span| positions of each row: where two positions tie at that boundary, rounding
    # can swap them and move one (probe, head) value by up to one position's attention / |span|. Seen on one
    # of 1080 values (3e-4) with tokenizers 0.23 / transformers 5.25; every other value agrees to 1e-5.
    diff = (together.per_probe["r2"] - alone.per_probe["r2"]).abs()
    assert (diff <= 1e-5).float().mean() >= 0.99 and diff.max() <= 1e-3
    torch.testing.assert_close(together.per_probe["r2"].mean(0), alone.per_probe["r2"].mean(0), atol=1e-4, rtol=0)
    assert torch.equal(together.per_probe["retrieval"], alone.per_probe["retrieval"])
    assert together.probe_ids == alone.probe_ids


def test_a_long_suffix_runs_in_chunks_with_the_same_scores(loaded, tiny_probes, monkeypatch):
    """The suffix after a shared prefix runs `SUFFIX_CHUNK` tokens at a time (its mask `[chunk, T]`, not
    `[suffix, T]`): with chunks of 16 tokens, every probe's suffix runs in several pieces, and the scores are
    those of one forward up to float rounding (the same tie allowance as above)."""
    from headprof import probe_scores
    from headprof.scoring import score_probes

    whole = score_probes(loaded, tiny_probes, ScoreConfig(), share_prefixes=True)
    monkeypatch.setattr(probe_scores, "SUFFIX_CHUNK", 16)
    chunked = score_probes(loaded, tiny_probes, ScoreConfig(), share_prefixes=True)
    diff = (chunked.per_probe["r2"] - whole.per_probe["r2"]).abs()
    assert (diff <= 1e-5).float().mean() >= 0.99 and diff.max() <= 1e-3
    assert (chunked.per_probe["retrieval"] != whole.per_probe["retrieval"]).float().mean() <= 0.01
    assert chunked.probe_ids == whole.probe_ids
