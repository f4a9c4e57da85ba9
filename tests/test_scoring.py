"""Scoring math on hand-built attention, and capture checked against eager attention on the real model."""

from __future__ import annotations

import pytest
import torch

from headprof.capture import AttentionCapture, attention_rows
from headprof.heads import kv_view
from headprof.probes import encode_probe
from headprof.scoring import ScoreConfig, r2_scores, retrieval_scores, score_probe, step_stats


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


def test_teacher_scores_equal_scores_from_eager_attention(loaded, tiny_probes):
    """The whole teacher-mode pipeline against the definition applied to eager T x T attention."""
    enc = encode_probe(loaded.tokenizer, tiny_probes[2])  # a reasoning probe
    with AttentionCapture(loaded.model):
        result = score_probe(loaded, enc, ScoreConfig(mode="teacher"))
    n = len(enc.target_ids)
    ids = torch.tensor([enc.prompt_ids + enc.target_ids[:-1]])
    loaded.model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = loaded.model(ids, output_attentions=True).attentions
    finally:
        loaded.model.set_attn_implementation("sdpa")
    rows = torch.stack([a[0, :, -n:].float() for a in attentions])  # [L, H, n, T]
    argmax, mass = step_stats(rows, enc.span)
    expected_r2 = r2_scores(mass)
    expected_ret = retrieval_scores(
        argmax, torch.tensor(enc.target_ids), torch.tensor(enc.prompt_ids + enc.target_ids), enc.span
    )
    torch.testing.assert_close(result.scores["r2"], expected_r2, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(result.scores["retrieval"], expected_ret)
    assert result.counted and result.scores["r2"].max() > 0.1


def test_generate_mode_counts_only_right_answers(loaded, tiny_probes):
    with AttentionCapture(loaded.model):
        results = [
            score_probe(loaded, encode_probe(loaded.tokenizer, p), ScoreConfig(mode="generate"))
            for p in tiny_probes[:2]
        ]
    for probe, result in zip(tiny_probes, results):
        assert result.counted == (probe.answer.lower() in result.answer.lower())
        if not result.counted:
            assert float(result.scores["r2"].abs().sum()) == 0.0
    assert any(r.counted for r in results)  # the embedded model retrieves at 512 tokens
