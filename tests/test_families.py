"""Model families on tiny random-weight models built from configs (tests/families.py; no download).

Per family: captured answer rows equal the eager attention's probabilities; every runtime method with budgets
covering the prompt gives the full cache's greedy tokens and logits; a compressed cache stores exactly the
kept entries, the recent part and the sliding-window layers' windows. Then the whole pipeline (probes, scores,
allocation, generation) on representative families, and the families headprof refuses in one line.
Low-precision decoding on these models is in test_precision.py.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from headprof.allocation import AllocConfig, allocate_artifact
from headprof.artifacts import load_alloc, load_scores, save_alloc, save_scores
from headprof.capture import CAPTURE_IMPL, AttentionCapture
from headprof.errors import HeadprofError
from headprof.models import LoadedModel, ModelSpec, info_from_config, weights_fingerprint
from headprof.models.registry import attention_switched
from headprof.probe_scores import r2_scores, step_stats
from headprof.probes import build_probes, encode_probe
from headprof.runtime import METHODS, cache_bytes, compressed
from headprof.scoring import ScoreConfig, score_probe, score_probes

from families import (
    CAPTURED,
    REFUSED,
    ROUTED,
    RUNTIME,
    VOCAB,
    WINDOW,
    capture_vs_eager,
    expected_bytes,
    random_scores,
    tiny_model,
    token_ids,
)
from numerics import greedy

REPRESENTATIVE = ["llama", "gemma2", "gpt-oss", "gemma3"]  # plain GQA; soft-capping; sinks; mostly sliding
COMPRESSING = [name for name in METHODS if name != "full"]
PROMPT, NEW = 48, 4


@functools.cache
def model(name: str, vocab: int = VOCAB):
    return tiny_model(name, vocab=vocab)


def info(name: str):
    return info_from_config(model(name).config, f"tiny/{name}")


@functools.cache
def full_run(name: str, vocab: int = VOCAB):
    return greedy(model(name, vocab), token_ids(PROMPT), NEW)


# ---------------------------------------------------------------- capture


@pytest.mark.parametrize("name", CAPTURED)
def test_captured_rows_equal_eager_attention(name):
    """The answer rows headprof captures are the probabilities transformers' eager attention returns: sliding
    windows and chunks (zero outside), soft-capping and sinks (rows summing to less than 1) included."""
    captured, eager = capture_vs_eager(model(name), token_ids(40), n_rows=6)
    assert sorted(captured) == list(range(len(eager)))
    for layer, probs in enumerate(eager):
        torch.testing.assert_close(captured[layer], probs[:, :, -6:].float(), atol=1e-5, rtol=1e-5)
    if name == "gpt-oss":  # the sink takes part of every row's mass
        assert float(captured[0].sum(-1).max()) < 1 - 1e-3


# ---------------------------------------------------------------- runtime


def _cases() -> list[tuple[str, str, str]]:
    """All methods on the representative families (HeadKV in the query-head layout, the others per KV head);
    elsewhere KVzip, whose extra pass runs over the cache and must leave sliding-window layers as they were."""
    cases = []
    for name in RUNTIME:
        methods = COMPRESSING if name in REPRESENTATIVE else ["kvzip"]
        cases += [(name, method, "query" if method == "headkv" else "kv") for method in methods]
    return cases


@pytest.mark.parametrize(("name", "method", "gqa"), _cases(), ids=lambda v: str(v))
def test_budgets_covering_the_prompt_reproduce_the_full_cache(name, method, gqa, tokenizer):
    # KVzip's reconstruction prompts are text: its models read the embedded model's tokenizer's ids
    vocab, text = (len(tokenizer), tokenizer) if method == "kvzip" else (VOCAB, None)
    net, ids, full = model(name, vocab), token_ids(PROMPT), full_run(name, vocab)
    press = compressed(
        net, method, 20 * PROMPT, gqa=gqa, window=8, scores=random_scores(info(name)), info=info(name), tokenizer=text
    )
    with press:
        run = greedy(net, ids, NEW)
    assert torch.equal(run.sequences, full.sequences)
    for mine, ref in zip(run.logits, full.logits):
        torch.testing.assert_close(mine, ref, atol=1e-4, rtol=1e-4)
    assert not press.stats.compressed and run.cache.get_seq_length() == PROMPT + NEW - 1


def test_a_compressed_context_answers_a_question_on_top_on_a_sliding_window_model(tokenizer):
    """KVzip's way: the context alone is prefilled (its reconstruction pass must leave the windows as they were),
    then the question runs on a fork of the cache, several tokens at once, through windows and compressed layers."""
    vocab = len(tokenizer)
    net, ids, full = model("gpt-oss", vocab), token_ids(PROMPT), full_run("gpt-oss", vocab)
    press = compressed(net, "kvzip", 20 * PROMPT, window=8, info=info("gpt-oss"), tokenizer=tokenizer)
    context = press.prefill(ids[:, :36])
    with press:
        run = net.generate(
            ids,
            cache=context.fork(),
            max_new_tokens=NEW,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
        )
    assert torch.equal(run.sequences, full.sequences) and context.get_seq_length() == 36
    for mine, ref in zip(run.logits, full.logits):
        torch.testing.assert_close(mine, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", RUNTIME)
def test_a_compressed_cache_stores_exactly_the_kept_entries(name):
    net, ids, spec = model(name), token_ids(PROMPT), info(name)
    press = compressed(net, "snapkv", 20, window=8, info=spec)
    with press:
        run = greedy(net, ids, NEW)
    cache, budgets = run.cache, press.budgets.clamp(max=PROMPT)
    for layer in spec.global_layers:
        assert torch.equal(cache.layers[layer].offsets.diff().cpu(), budgets[layer])
    assert budgets[spec.window_layers].sum() == 0  # sliding-window layers are not budgeted
    sizes = cache_bytes(cache)
    assert sizes["kv_bytes"] == expected_bytes(cache, spec, PROMPT, NEW - 1) and sizes["padding_bytes"] == 0
    assert press.stats.compressed == bool(spec.global_layers)


def test_query_layout_stores_generated_tokens_once_per_kv_head():
    """Per-query-head budgets repeat the kept prompt entries per query head (HeadKV's layout), but not what is
    generated after the prompt: a long generation cannot outgrow the full cache (storing the 19 tokens after
    the prompt per query head, as before, would: 4 x 16 + 4 x 19 > 2 x 67 entries per layer)."""
    name, new = "llama", 20
    net, ids, spec = model(name), token_ids(PROMPT), info(name)
    full = greedy(net, ids, new)
    with compressed(net, "snapkv", 16, gqa="query", window=8, info=spec):
        run = greedy(net, ids, new)
    sizes, full_bytes = cache_bytes(run.cache), cache_bytes(full.cache)["kv_bytes_needed"]
    assert sizes["kv_bytes"] == expected_bytes(run.cache, spec, PROMPT, new - 1)
    assert all(run.cache.layers[i].recent_keys.shape[1] == spec.n_kv_heads for i in spec.global_layers)
    assert sizes["kv_bytes"] < full_bytes and sizes["index_bytes"] > 0


# ---------------------------------------------------------------- probes -> scores -> budgets -> generation


@pytest.mark.parametrize("name", ["gemma2", "gpt-oss"])
def test_probes_scores_budgets_and_generation(name, tokenizer, needles, tmp_path):
    """The whole pipeline on a tiny model that reads the embedded model's tokens: sliding-window layers are
    scored like any other, left out of the allocation (recorded in the artifact), and kept as windows."""
    net = model(name, len(tokenizer))
    spec = info_from_config(net.config, f"tiny/{name}", weights_fingerprint(net))
    loaded = LoadedModel(net, tokenizer, ModelSpec(name, spec.model_id, name, ""), spec)
    probes = build_probes(needles[:2], tokenizer, lengths=(200,), depths=(50,), tokenizer_name="smollm2-135m")
    save_scores(tmp_path / "scores.safetensors", score_probes(loaded, probes, ScoreConfig(mode="teacher")))
    scores = load_scores(tmp_path / "scores.safetensors")
    assert scores.model.layer_types == spec.layer_types and bool(scores.scores("r2").sum() > 0)
    config = AllocConfig(24, "headkv", window=8, gqa="kv")
    save_alloc(tmp_path / "alloc.safetensors", allocate_artifact(scores, config, "r2", tmp_path / "s"))
    alloc = load_alloc(tmp_path / "alloc.safetensors")
    assert alloc.meta["sliding_layers"] == spec.window_layers
    assert int(alloc.budgets[spec.window_layers].sum()) == 0
    assert int(alloc.budgets.sum()) == 24 * len(spec.global_layers) * spec.n_kv_heads
    ids = torch.tensor([encode_probe(tokenizer, probes[0]).prompt_ids])
    with compressed(net, "headkv", allocation=alloc, info=spec), torch.no_grad():
        cache = net.generate(ids, max_new_tokens=2, do_sample=False, return_dict_in_generate=True).cache
    for layer in spec.global_layers:
        assert torch.equal(cache.layers[layer].offsets.diff(), alloc.budgets[layer].long().clamp(max=ids.shape[1]))
    for layer in spec.window_layers:
        assert cache.layers[layer].keys.shape[2] == WINDOW - 1


def test_generate_mode_rows_index_the_whole_sequence_on_sliding_layers(tokenizer, needles):
    """Generate mode captures one row per decode step; on sliding-window layers they must still index prompt
    positions (zero outside the window), as the eager attention over the whole answered sequence does. The
    window (160 of ~200 tokens) holds the needle, so rows indexed from the window's start would score it
    elsewhere."""
    net = tiny_model("gemma2", len(tokenizer), sliding_window=160)
    spec = info_from_config(net.config, "tiny/gemma2")
    loaded = LoadedModel(net, tokenizer, ModelSpec("gemma2", spec.model_id, "gemma2", ""), spec)
    probe = build_probes(needles[:1], tokenizer, lengths=(200,), depths=(50,), tokenizer_name="smollm2-135m")[0]
    enc, config = encode_probe(tokenizer, probe), ScoreConfig(mode="generate")
    with torch.no_grad():  # generate mode decodes as many tokens as the target has (HeadKV's cap)
        ids = torch.tensor([enc.prompt_ids])
        answer = net.generate(ids, max_new_tokens=len(enc.target_ids), do_sample=False)[0, ids.shape[1] :].tolist()
    # the target is the model's own answer, so that the answer is right (F1 1.0 against the target)
    own = tokenizer.decode(answer)
    enc = dataclasses.replace(enc, probe=dataclasses.replace(probe, answer=own, target=own))
    with AttentionCapture(net):
        result = score_probe(loaded, enc, config)
    assert result.right
    previous = net.config._attn_implementation
    net.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = net(torch.tensor([enc.prompt_ids + answer[:-1]]), output_attentions=True).attentions
    finally:
        net.set_attn_implementation(previous)
    rows = torch.stack([probs[0, :, -len(answer) :].float() for probs in eager])
    _, mass = step_stats(rows, enc.span("sentence"))  # r2's reference span
    torch.testing.assert_close(result.scores["r2"], r2_scores(mass), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- refused in one line


@pytest.mark.parametrize("name", REFUSED)
def test_families_headprof_cannot_serve_are_refused_in_one_line(name):
    net = tiny_model(name)
    with pytest.raises(HeadprofError) as capture_error, AttentionCapture(net):
        pass
    with pytest.raises(HeadprofError) as runtime_error, compressed(net, "snapkv", 64):
        pass
    for error in (capture_error, runtime_error):
        message = str(error.value)
        assert "\n" not in message and any(why in message for why in ("registry", "not attention", "ALiBi"))
    assert net.config._attn_implementation != "headprof"  # a refused switch leaves the model as it was


@pytest.mark.skipif(not ROUTED["falcon"], reason="this transformers refuses Falcon at the switch (before 5.25)")
def test_a_position_bias_in_the_mask_is_refused_where_the_config_does_not_say_so():
    # Past the config check (which refuses `alibi: true` first), the mask itself gives ALiBi away: rows read
    # from it as visibility would drop every biased position
    net = tiny_model("falcon-alibi")
    with attention_switched(net, CAPTURE_IMPL), AttentionCapture.rows(2, lambda layer, rows: None):
        with pytest.raises(HeadprofError, match="position bias"):
            net(token_ids(16), use_cache=False)


def test_mla_scores_but_refuses_the_runtime():
    with pytest.raises(HeadprofError, match="latent shared by all heads"):
        compressed(model("deepseek-v3"), "snapkv", 64)
