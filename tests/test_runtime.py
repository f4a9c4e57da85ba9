"""Compressed KV cache: the selection core and varlen attention on synthetic tensors, then the embedded model."""

from __future__ import annotations

import pytest
import torch

from headprof.artifacts import AllocArtifact
from headprof.errors import HeadprofError
from headprof.models import ModelInfo
from headprof.probes import build_probes, encode_probe, load_needles
from headprof.runtime import METHODS, cache_bytes, compressed
from headprof.runtime.cache import CacheStats, CompressedLayer, LayerPlan
from headprof.runtime.methods.snapkv import SnapKVOptions
from headprof.runtime.selection import accumulated_scores, adakv_top_k, safeguard_top_k, top_k_with_window

from helpers import NEEDLES, REFERENCE, AttentionModule

# ---------------------------------------------------------------- selection on hand-built scores


def _kept(selection, row):
    a, b = selection.offsets[row].item(), selection.offsets[row + 1].item()
    return selection.positions[a:b].tolist()


def test_top_k_keeps_window_then_best_scores():
    scores = torch.tensor([[[0.1, 0.9, 0.2, 0.8, 0.3, 0.0, 0.0, 0.0], [0.5, 0.1, 0.7, 0.2, 0.6, 0.4, 0.0, 0.0]]])
    sel = top_k_with_window(scores, torch.tensor([3, 5]), window=2)
    assert _kept(sel, 0) == [1, 6, 7]
    assert _kept(sel, 1) == [0, 2, 4, 6, 7]
    everything = top_k_with_window(scores, torch.tensor([100, 8]), window=2)
    assert _kept(everything, 0) == list(range(8)) and _kept(everything, 1) == list(range(8))


def test_adakv_pools_a_layer_with_per_head_floors():
    torch.manual_seed(0)
    scores = torch.rand(1, 3, 40) * 0.01
    scores[0, 0, :20] += 1.0  # head 0 has many strong positions
    budgets = torch.tensor([12, 12, 12])
    # AdaKV's rule: of the 30 pooled places the heads win [23, 4, 3] -> round(0.8 c + int(0.2 * 10)) + w:
    # [20, 5, 4] + 2 = [22, 7, 6]; the total (35) is close to, not exactly, the 36 budgeted
    won = scores[0, :, :38].flatten().topk(30).indices // 38
    assert won.bincount(minlength=3).tolist() == [23, 4, 3]
    assert adakv_top_k(scores, budgets, window=2, floor=0.2).lengths.tolist() == [22, 7, 6]
    sel = safeguard_top_k(scores, budgets, window=2, floor=0.2)  # kvpress: floor reserved, exact total
    lengths = sel.lengths.tolist()
    assert sum(lengths) == 36  # the layer's pool is conserved
    assert min(lengths) >= 2 + 2  # window + floor(0.2 * 10)
    assert lengths[0] > 12 > lengths[1]  # budget moves to the head that needs it


def test_accumulated_scores_equal_the_full_matrix():
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 50, 8), torch.randn(1, 2, 50, 8)
    full = q @ k.repeat_interleave(2, 1).transpose(-1, -2) * 8**-0.5
    causal = torch.ones(50, 50, dtype=torch.bool).triu(1)
    expected = full.masked_fill(causal, float("-inf")).softmax(-1).sum(2)
    torch.testing.assert_close(accumulated_scores(q, k, 8**-0.5, block=16), expected)


def test_streamingllm_keeps_sinks_and_recent():
    method = METHODS["streamingllm"]()
    scores = method.score(torch.zeros(1, 2, 30, 4), torch.zeros(1, 2, 30, 4), 1.0, 3, 2)
    sel = method.select(scores, torch.tensor([10, 10]), window=3)
    assert _kept(sel, 0) == [0, 1, 2, 3, 24, 25, 26, 27, 28, 29]  # the recent part is B - sinks, not the window
    tight = method.select(scores, torch.tensor([6, 3]), window=4)
    assert _kept(tight, 0) == [0, 1, 2, 3, 28, 29] and _kept(tight, 1) == [0, 1, 2]


# ---------------------------------------------------------------- varlen attention vs a by-hand reference


@pytest.mark.parametrize("layout", ["kv", "query"])
def test_varlen_attention_matches_a_per_head_reference(layout):
    torch.manual_seed(1)
    n_heads, n_kv, total, dim = 4, 2, 24, 8
    n_stored = n_kv if layout == "kv" else n_heads
    budgets = torch.tensor([6, 9, 12, 30][:n_stored])
    plan = LayerPlan(METHODS["snapkv"](SnapKVOptions(kernel=1)), budgets, window=3)
    layer, module, scaling = CompressedLayer(plan, CacheStats()), AttentionModule(), dim**-0.5
    keys, values, query = (
        torch.randn(1, n_kv, total, dim),
        torch.randn(1, n_kv, total, dim),
        torch.randn(1, n_heads, total, dim),
    )
    layer.update(keys, values)
    layer.attend(module, query, scaling)  # prefill: exact attention, then compression
    assert layer.phase == "compressed" and layer.get_seq_length() == total
    assert layer.flat_keys.shape[0] == int(budgets.clamp(max=total).sum())
    new_k, new_v, new_q = torch.randn(1, n_kv, 3, dim), torch.randn(1, n_kv, 3, dim), torch.randn(1, n_heads, 3, dim)
    layer.update(new_k, new_v)
    out = layer.attend(module, new_q, scaling)  # [1, 3, H, d]
    kept = [layer.positions[a:b].long() for a, b in zip(layer.offsets[:-1].tolist(), layer.offsets[1:].tolist())]
    for head in range(n_heads):
        kv, stored = head // 2, head if layout == "query" else head // 2
        k_all = torch.cat([keys[0, kv, kept[stored]], new_k[0, kv]])
        v_all = torch.cat([values[0, kv, kept[stored]], new_v[0, kv]])
        logits = new_q[0, head] @ k_all.T * scaling
        n_old = len(kept[stored])
        for i in range(3):  # new token i sees the kept entries and new tokens 0..i
            logits[i, n_old + i + 1 :] = float("-inf")
        torch.testing.assert_close(out[0, :, head], logits.softmax(-1) @ v_all, atol=1e-5, rtol=1e-5)


def _step_reference(keys, values, kept, query, scaling, n_stored, n_old):
    """Softmax attention of query `[B, Hq, q, d]` over, for each head, its stored row's kept prompt positions and
    every token after the prompt (`keys`/`values` `[B, Hkv, prompt + after, d]`), causal for the step's own."""
    batch, n_heads, q_len, _ = query.shape
    n_kv, prompt = keys.shape[1], keys.shape[2] - n_old - q_len
    out = torch.empty(batch, q_len, n_heads, values.shape[-1])
    for b in range(batch):
        for head in range(n_heads):
            kv, stored = head // (n_heads // n_kv), head // (n_heads // n_stored)
            for t in range(q_len):
                seen = torch.cat([kept[b * n_stored + stored], torch.arange(prompt, prompt + n_old + t + 1)])
                weights = (query[b, head, t] @ keys[b, kv, seen].T * scaling).softmax(-1)
                out[b, t, head] = weights @ values[b, kv, seen]
    return out


@pytest.mark.parametrize("layout", ["kv", "query"])
def test_decode_reads_each_row_through_growth_and_forks(layout):
    """Budgets out of order (rows grouped by length at compression), a head that keeps nothing, two batch
    elements, tokens past the first doublings of the room after the prompt, a step of several tokens, and two
    forks that append different tokens: every step is softmax attention over exactly its row's entries."""
    from headprof.runtime.cache import CompressedCache
    from headprof.runtime.selection import Selection

    torch.manual_seed(2)
    n_heads, n_kv, prompt, dim, batch, scaling = 4, 2, 24, 8, 2, 8**-0.5
    budgets = torch.tensor([5, 0]) if layout == "kv" else torch.tensor([7, 3, 0, 7])
    n_stored = budgets.numel()
    cache = CompressedCache([LayerPlan(METHODS["snapkv"](), budgets, window=2)])
    layer = cache.layers[0]
    keys, values = torch.randn(batch, n_kv, prompt, dim), torch.randn(batch, n_kv, prompt, dim)
    layer.update(keys, values)
    kept = [torch.randperm(prompt)[: int(n)].sort().values for n in budgets.repeat(batch)]
    offsets = torch.tensor([0] + [len(k) for k in kept]).cumsum(0)
    layer.compress(None, scaling, selection=Selection(torch.cat(kept), offsets))
    for q_len in [1] * 20 + [3]:
        new_k, new_v = torch.randn(batch, n_kv, q_len, dim), torch.randn(batch, n_kv, q_len, dim)
        query = torch.randn(batch, n_heads, q_len, dim)
        n_old = keys.shape[2] - prompt
        keys, values = torch.cat([keys, new_k], dim=2), torch.cat([values, new_v], dim=2)
        layer.update(new_k, new_v)
        expected = _step_reference(keys, values, kept, query, scaling, n_stored, n_old)
        torch.testing.assert_close(layer.attend(None, query, scaling), expected, atol=1e-5, rtol=1e-5)
    allocated, needed, _ = layer.storage_bytes()
    assert allocated == needed == 2 * 4 * dim * (int(budgets.sum()) * batch + batch * n_kv * 23)
    assert 0 < layer.reserved_bytes() <= needed  # room made by doubling, reported apart
    torch.testing.assert_close(layer.recent_keys, keys[:, :, prompt:])
    twins, steps = [cache.fork(), cache.fork()], []
    for twin in twins:  # each appends its own token, then both attend: neither sees the other's
        new_k, new_v = torch.randn(batch, n_kv, 1, dim), torch.randn(batch, n_kv, 1, dim)
        twin.layers[0].update(new_k, new_v)
        steps.append((torch.cat([keys, new_k], dim=2), torch.cat([values, new_v], dim=2)))
    for twin, (twin_keys, twin_values) in zip(twins, steps):
        query = torch.randn(batch, n_heads, 1, dim)
        expected = _step_reference(twin_keys, twin_values, kept, query, scaling, n_stored, 23)
        torch.testing.assert_close(twin.layers[0].attend(None, query, scaling), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.recent_keys, keys[:, :, prompt:])  # the source is as it was


# ---------------------------------------------------------------- the embedded model


@pytest.fixture(scope="module")
def prompt(tokenizer):
    needle = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")[0]
    probe = build_probes([needle], tokenizer, lengths=(300,), depths=(50,))[0]
    return probe, torch.tensor([encode_probe(tokenizer, probe).prompt_ids])


@pytest.fixture(scope="module")
def scores_artifact():
    from headprof.artifacts import load_scores

    return load_scores(REFERENCE / "scores.safetensors")


def _generate(model, ids, **kwargs):
    return model.generate(
        ids, max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True, **kwargs
    )


@pytest.fixture(scope="module")
def full_run(loaded, prompt):
    return _generate(loaded.model, prompt[1])


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("gqa", ["kv", "query"])
def test_budgets_above_the_prompt_reproduce_full_kv(loaded, tokenizer, prompt, full_run, scores_artifact, method, gqa):
    """Budgets >= prompt length: every method's cache holds everything, so tokens and logits must match."""
    budget = 8000  # PyramidKV's top layer then keeps (8000 - 32) / 20 + 32 = 430 > 286 prompt tokens
    with compressed(loaded.model, method, budget, gqa=gqa, scores=scores_artifact, tokenizer=tokenizer) as press:
        run = _generate(loaded.model, prompt[1])
    assert torch.equal(run.sequences, full_run.sequences)
    for mine, ref in zip(run.logits, full_run.logits):
        torch.testing.assert_close(mine, ref, atol=2e-4, rtol=1e-4)
    assert not press.stats.compressed and press.stats.prompt_tokens == prompt[1].shape[1]
    if method != "full":
        assert run.cache.get_seq_length() == prompt[1].shape[1] + 7  # every token, not the kept count


@pytest.mark.parametrize("method", sorted(METHODS))
def test_prompts_shorter_than_the_window_are_kept_whole(loaded, tokenizer, scores_artifact, method):
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids  # 5 tokens < window 32
    full = _generate(loaded.model, ids)
    with compressed(loaded.model, method, 64, scores=scores_artifact, tokenizer=tokenizer) as press:
        run = _generate(loaded.model, ids)
    assert torch.equal(run.sequences, full.sequences) and not press.stats.compressed


def test_method_options_are_validated():
    with pytest.raises(HeadprofError, match="odd number"):
        SnapKVOptions(kernel=4)
    with pytest.raises(HeadprofError, match="unknown pooling"):
        SnapKVOptions(pooling="median")
    assert SnapKVOptions(kernel=1, pooling="avg").kernel == 1


def test_manual_loop_equals_generate_and_rope_continues_from_true_length(loaded, prompt):
    model, ids = loaded.model, prompt[1]
    with compressed(model, "snapkv", 64) as press:
        generated = model.generate(ids, max_new_tokens=6, do_sample=False)
        with torch.no_grad():
            out = model(ids, use_cache=True)
            cache, tokens = out.cache, [int(out.logits[0, -1].argmax())]
            assert press.stats.compressed and cache.get_seq_length() == ids.shape[1]
            for _ in range(5):
                step_out = model(torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
                tokens.append(int(step_out.logits[0, -1].argmax()))
    assert generated[0, ids.shape[1] :].tolist() == tokens
    # explicit true positions give the same logits as the defaults the cache implies
    with compressed(model, "snapkv", 64), torch.no_grad():
        cache = model(ids, use_cache=True).cache
        implicit = model(torch.tensor([[tokens[0]]]), cache=cache.fork(), use_cache=True).logits
        explicit = model(
            torch.tensor([[tokens[0]]]), cache=cache.fork(), use_cache=True, position_ids=torch.tensor([[ids.shape[1]]])
        ).logits
        compressed_len = int(cache.layers[0].flat_keys.shape[0] / cache.layers[0].n_stored)
        wrong = model(
            torch.tensor([[tokens[0]]]),
            cache=cache.fork(),
            use_cache=True,
            position_ids=torch.tensor([[compressed_len]]),
        ).logits
    torch.testing.assert_close(implicit, explicit)
    assert not torch.allclose(implicit, wrong, atol=1e-3)


def test_memory_holds_only_kept_entries(loaded, tokenizer):
    needle = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")[1]
    probe = build_probes([needle], tokenizer, lengths=(1000,), depths=(50,))[0]
    ids = torch.tensor([encode_probe(tokenizer, probe).prompt_ids])
    info = loaded.info
    sizes = {}
    for gqa in ("kv", "query"):
        with compressed(loaded.model, "snapkv", 64, gqa=gqa), torch.no_grad():
            cache = loaded.model(ids, use_cache=True).cache
        sizes[gqa] = cache_bytes(cache)
        stored = info.n_kv_heads if gqa == "kv" else info.n_heads
        expected = 2 * info.head_dim * 4 * info.n_layers * stored * 64
        assert sizes[gqa]["kv_bytes"] == expected and sizes[gqa]["padding_bytes"] == 0
    assert sizes["query"]["kv_bytes"] == 3 * sizes["kv"]["kv_bytes"]
    full = 2 * info.n_layers * info.n_kv_heads * ids.shape[1] * info.head_dim * 4
    assert sizes["kv"]["kv_bytes"] / full == pytest.approx(64 / ids.shape[1])


def test_headkv_budgets_follow_the_allocation(loaded, prompt, scores_artifact):
    press = compressed(loaded.model, "headkv", 64, scores=scores_artifact, gqa="query")
    assert press.budgets.shape == (30, 9) and int(press.budgets.sum()) == 64 * 270
    with press, torch.no_grad():
        cache = loaded.model(prompt[1], use_cache=True).cache
    lengths = torch.stack([cache.layers[i].offsets.diff() for i in range(30)])
    assert torch.equal(lengths, press.budgets.clamp(max=prompt[1].shape[1]))


def test_sampling_batches_and_kvzip_reuse(loaded, prompt, tokenizer):
    model, ids = loaded.model, prompt[1]
    torch.manual_seed(0)
    with compressed(model, "h2o", 96):
        sampled = model.generate(ids, max_new_tokens=5, do_sample=True, top_k=5)
        batch = model.generate(ids.repeat(2, 1), max_new_tokens=5, do_sample=False)
    assert sampled.shape[1] == ids.shape[1] + 5 and torch.equal(batch[0], batch[1])
    # left-padded batches decode together (tests/test_batch_prompts.py); right padding is refused in words
    with pytest.raises(HeadprofError, match="left-padded"), compressed(model, "snapkv", 96):
        model.generate(
            ids.repeat(2, 1),
            attention_mask=torch.ones(2, ids.shape[1]).index_fill_(1, torch.tensor([ids.shape[1] - 1]), 0),
            max_new_tokens=2,
        )
    # kvzip: compress the context once, then ask two questions of forks of the same cache
    probe = prompt[0]
    split = probe.prompt.index("\n\nQuestion:")
    context_ids = tokenizer(probe.prompt[:split], add_special_tokens=False, return_tensors="pt").input_ids
    press = compressed(model, "kvzip", 8000, tokenizer=tokenizer)
    cache = press.prefill(context_ids)
    assert cache.phase == "compressed" and press.stats.prefill_seconds > 0
    tails = [probe.prompt[split:], probe.prompt[split:].replace("Question: ", "Question: Tell me this. ")]
    with press:
        for tail in tails:
            tail_ids = tokenizer(tail, add_special_tokens=False, return_tensors="pt").input_ids
            out = model.generate(
                torch.cat([context_ids, tail_ids], 1), cache=cache.fork(), max_new_tokens=16, do_sample=False
            )
            assert probe.answer in tokenizer.decode(out[0, context_ids.shape[1] + tail_ids.shape[1] :])
    assert cache.get_seq_length() == context_ids.shape[1]  # forks leave the compressed context untouched


def test_bad_runtime_input(loaded, prompt, scores_artifact):
    with pytest.raises(HeadprofError, match="unknown method 'zip'"):
        compressed(loaded.model, "zip", 128)
    with pytest.raises(HeadprofError, match="headkv needs an allocation"):
        compressed(loaded.model, "headkv", 128)
    with pytest.raises(HeadprofError, match="must be larger than the window"):
        compressed(loaded.model, "snapkv", 16)
    other = ModelInfo("other/model", 30, 9, 3, 64, 8192, "ffff")
    with pytest.raises(HeadprofError, match="allocation was made for other/model"):
        compressed(loaded.model, "headkv", allocation=AllocArtifact(other, torch.full((30, 9), 64), {"gqa": "query"}))
    with pytest.raises(HeadprofError, match="empty prompt"), compressed(loaded.model, "snapkv", 64):
        loaded.model(torch.zeros(1, 0, dtype=torch.long))


def test_budgets_covering_the_prompt_skip_the_scoring_pass(monkeypatch):
    # the scores cannot change what is kept when every head keeps the whole prompt: none is computed
    from headprof.runtime.methods.snapkv import SnapKV

    from families import tiny_model, token_ids
    from numerics import greedy

    calls: list[int] = []
    real = SnapKV.score
    monkeypatch.setattr(SnapKV, "score", lambda self, *args: calls.append(1) or real(self, *args))
    net = tiny_model("llama")
    for budget, scored in ((1000, False), (16, True)):
        calls.clear()
        with compressed(net, "snapkv", budget, window=8) as press:
            greedy(net, token_ids(48), 2)
        assert bool(calls) == scored and press.stats.compressed == scored
