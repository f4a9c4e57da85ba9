"""Every method keeps what its reference code keeps: headprof against oracles written from the references
(tests/oracles/, each citing file and commit), fed identical Q/K.

Inputs: the committed fixture (post-RoPE Q/K of the embedded model, tests/oracles/fixture.py) in float32,
bf16 and fp16, random tensors at the shapes users run (head dim 128, a GQA group of 4, 700 positions, in
float32, bf16 and fp16: at head dim 64 the scale 1/8 is exact and rounding the logits cannot show), and, for
KVzip, whose queries come from its own reconstruction passes, the embedded model itself. Kept sets must be
equal (Jaccard 1.0): headprof rounds where each reference rounds and calls the same torch op (topk or sort)
on the same candidates, so even ties are broken alike.
"""

from __future__ import annotations

import copy

import pytest
import torch

from headprof.allocation import AllocConfig, allocate, pyramid
from headprof.errors import HeadprofError
from headprof.probes import build_probes, load_needles
from headprof.runtime import compressed
from headprof.runtime.cache import CacheStats, CompressedLayer, LayerPlan
from headprof.runtime.methods.h2o import H2O, H2OOptions
from headprof.runtime.methods.kvzip import KVzip, KVzipOptions, chat_frame
from headprof.runtime.selection import Selection

from helpers import NEEDLES, REFERENCE, AttentionModule
from oracles import fixture, harness, jaccard
from oracles import h2o as h2o_oracle
from oracles import headkv as headkv_oracle
from oracles import kvcache_factory as kvcf
from oracles import kvzip as kvzip_oracle

SCORED = ("streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
HALF = [torch.bfloat16, torch.float16]
CHATML_OPENER = kvzip_oracle.OPENERS["qwen"]  # the authors' opener of the embedded model's family (ChatML)
SMOLLM2_PREFIX = fixture.CHAT_PREFIX


@pytest.fixture(scope="module")
def qk():
    return fixture.load()


@pytest.fixture(scope="module")
def scores_artifact():
    from headprof.artifacts import load_scores

    return load_scores(REFERENCE / "scores.safetensors")


def _fixture_jaccard(qk, name, scores_artifact, budget, window, gqa="kv", dtype=torch.float32, **options) -> float:
    qk = {key: value.to(dtype) if value.is_floating_point() else value for key, value in qk.items()}
    both = either = 0
    for layer in fixture.LAYERS:
        if name == "h2o" and layer != fixture.ALL_QUERIES_LAYER:
            continue  # H2O reads every query: stored for one layer
        q = qk[f"queries.{layer}"] if name == "h2o" else qk[f"window_queries.{layer}"]
        case = harness.Case(name, budget, window, layer, gqa, scores_artifact, options)
        a, b = harness.jaccard_pair(case, q, qk[f"keys.{layer}"])
        both, either = both + a, either + b
    return both / either


# ---------------------------------------------------------------- SnapKV family, H2O, StreamingLLM


@pytest.mark.parametrize("name", SCORED)
@pytest.mark.parametrize("gqa", ["kv", "query"])
@pytest.mark.parametrize("window", [8, 32])  # KVCache-Factory's and headprof's defaults
@pytest.mark.parametrize("budget", [64, 128, 200])  # 200: PyramidKV's short-prompt fallback (262 < 2 * 192)
def test_defaults_keep_what_the_reference_keeps_on_the_fixture(qk, scores_artifact, name, gqa, window, budget):
    for dtype in DTYPES:
        assert _fixture_jaccard(qk, name, scores_artifact, budget, window, gqa, dtype) == 1.0, dtype


@pytest.mark.parametrize("name", SCORED)
@pytest.mark.parametrize("dtype", DTYPES)
def test_defaults_keep_what_the_reference_keeps_at_head_dim_128(name, dtype):
    # Llama-3-8B's shape: scaling in float32 after a bf16 matmul instead of the references' division in bf16
    # gave 0.94-0.98 here (SnapKV, AdaKV, HeadKV), 0.99 for H2O
    for seed in range(3):
        for gqa in ("kv", "query"):
            assert harness.random_jaccard(name, dtype, seed, gqa) == 1.0, (seed, gqa)


@pytest.mark.parametrize(
    "name, options",
    [
        ("snapkv", {"gqa_order": "pool-mean"}),
        ("adakv", {"floor_rule": "kvpress"}),
        ("adakv", {"normalize": True, "floor": 0.5}),
        ("pyramidkv", {"pooling": "avg", "kernel": 5}),
    ],
)
@pytest.mark.parametrize("dtype", HALF)
def test_options_keep_what_their_reference_keeps_at_head_dim_128(name, options, dtype):
    assert all(harness.random_jaccard(name, dtype, seed, **options) == 1.0 for seed in range(2))


@pytest.mark.parametrize(
    "name, options",
    [
        ("snapkv", {"gqa_order": "pool-mean"}),  # kvpress's order
        ("adakv", {"floor_rule": "kvpress"}),  # kvpress's reserved floor
        ("adakv", {"normalize": True, "floor": 0.5}),
        ("snapkv", {"pooling": "avg"}),
        ("pyramidkv", {"pooling": "avg", "kernel": 5}),
        ("headkv", {"pooling": "avg"}),
        ("streamingllm", {"sinks": 1}),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_options_keep_what_their_reference_keeps(qk, scores_artifact, name, options, dtype):
    for budget in (64, 128):
        assert _fixture_jaccard(qk, name, scores_artifact, budget, 8, dtype=dtype, **options) == 1.0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("name", ["snapkv", "pyramidkv", "adakv", "h2o", "streamingllm"])
def test_random_tensors(name, seed):
    generator = torch.Generator().manual_seed(seed)
    total = 40 + 7 * seed
    q = torch.randn(1, 4, total, 16, generator=generator)
    k = torch.randn(1, 2, total, 16, generator=generator)
    for gqa in ("kv", "query"):
        for budget, window in ((12, 4), (20, 8), (total - 1, 4), (total, 8), (total + 5, 4)):
            case = harness.Case(name, budget, window, seed % 30, gqa)
            assert jaccard(harness.headprof_keep(case, q, k), harness.oracle_keep(case, q, k)) == 1


@pytest.mark.parametrize("name", ["snapkv", "h2o", "kvzip"])
def test_scale_head_dim_is_the_references_sqrt_of_the_head_dim(name):
    # Gemma-2-27B scales its logits by 144**-0.5 at head dim 128; every reference divides by sqrt(128) anyway
    from headprof.runtime.methods import build_method
    from headprof.runtime.methods.kvzip import ReconstructionPass

    q, k, _ = harness.random_qk(0, torch.bfloat16, total=200)
    model_scale, literal = build_method(name), build_method(name, scale="head-dim")
    if name == "kvzip":
        extra = ReconstructionPass(torch.zeros(1, 40, dtype=torch.long), 8, 160, 8)
        q = q[:, :, -40:]
        assert torch.equal(literal.score_pass(extra, q, k, 144**-0.5, 2), kvzip_oracle.score(q, k, 8, 8, 160))
        assert not torch.equal(model_scale.score_pass(extra, q, k, 144**-0.5, 2), kvzip_oracle.score(q, k, 8, 8, 160))
        return
    q = q if name == "h2o" else q[:, :, -8:]
    reference = model_scale.score(q, k, 128**-0.5, 8, 2)
    assert torch.equal(literal.score(q, k, 144**-0.5, 8, 2), reference)
    assert not torch.equal(model_scale.score(q, k, 144**-0.5, 8, 2), reference)


def test_max_pooling_ties_are_broken_by_topk_not_by_position():
    # a plateau of 7 equal pooled scores and room for 3 of them: torch.topk decides which, as in the reference
    q, k = torch.zeros(1, 1, 20, 16), torch.zeros(1, 1, 20, 16)
    q[..., -4:, 0], k[..., 9, 0] = 4.0, 4.0  # the window's queries all point at position 9
    case = harness.Case("snapkv", budget=7, window=4)
    mine = harness.headprof_keep(case, q, k)
    assert torch.equal(mine, harness.oracle_keep(case, q, k))
    assert mine[0, 0, 6:13].sum() == 3


@pytest.mark.parametrize(
    "total, budget, window, n_layers",
    [
        (600, 512, 8, 30),  # short prompt: uniform
        (2048, 512, 8, 30),
        (2048, 512, 8, 32),
        (1000, 128, 8, 4),
        (200, 128, 32, 30),  # the bottom layer capped at T - w
        (100, 128, 32, 30),  # T < B: nothing compressed
    ],
)
def test_pyramid_schedule_is_kvcache_factorys(total, budget, window, n_layers):
    config = AllocConfig(budget, "pyramid", window=window)
    budgets = pyramid((n_layers, 2), config, context=total)
    expected = []
    for layer in range(n_layers):
        capacity = kvcf.pyramid_capacity(total, budget, window, n_layers, layer)
        expected.append(budget if capacity is None else capacity + window)  # None: B > T, nothing dropped
    assert budgets[:, 0].tolist() == expected and bool((budgets[:, 1] == budgets[:, 0]).all())


def test_pyramid_short_prompt_falls_back_to_uniform():
    # T=600 < 2 (B - w) = 1008: every layer keeps B = 512, 15 360 entries per head index over 30 layers
    # (the earlier exact-total pyramid capped the bottom layers at T and kept 12 846)
    budgets = pyramid((30, 1), AllocConfig(512, "pyramid", window=8), context=600)
    assert int(budgets.clamp(max=600).sum()) == 15_360
    # without a prompt length: the schedule of long prompts, 991, 958, ..., 34 (total 15 375 > 30 x 512)
    long = pyramid((30, 1), AllocConfig(512, "pyramid", window=8))
    assert long[:3, 0].tolist() == [991, 958, 925] and int(long[-1, 0]) == 34 and int(long.sum()) == 15_375


@pytest.mark.parametrize("gqa", ["query", "kv"])
@pytest.mark.parametrize("budget, window, beta", [(128, 32, 1.2), (64, 8, 1.01), (512, 8, 2.0)])
def test_headkv_budgets_are_the_references_with_its_rounding(scores_artifact, gqa, budget, window, beta):
    # the fixture's model: 30 x 9 query heads (3 KV heads); the reference rounds each head (torch.round)
    scores = scores_artifact.scores("r2")
    config = AllocConfig(budget, "headkv", window, beta, gqa=gqa)
    kv_scores = scores if gqa == "query" else scores.view(30, 3, 3).sum(-1)
    expected = headkv_oracle.capacities(kv_scores, budget, window, beta) + window
    rounded = allocate(scores, AllocConfig(budget, "headkv", window, beta, gqa=gqa, rounding="round"), 3)
    assert torch.equal(rounded, expected.long())
    exact = allocate(scores, config, 3)  # the default: largest remainder, the exact total, within 1 per head
    assert int(exact.sum()) == budget * exact.numel() and int((exact - expected).abs().max()) <= 1


# ---------------------------------------------------------------- H2O's decode-time eviction


@pytest.mark.parametrize("layout", ["kv", "query"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_h2o_decode_eviction_is_the_original_h2o(layout, dtype):
    # head dim 128, 40 decode steps: in half precision the original's scores are rounded at every step
    torch.manual_seed(3)
    n_heads, n_kv, total, dim, budget, window = 4, 2, 48, 128, 16, 4
    n_stored, per = (n_kv, 2) if layout == "kv" else (n_heads, 1)
    plan = LayerPlan(H2O(H2OOptions(decode="evict")), torch.full((n_stored,), budget), window)
    layer = CompressedLayer(plan, CacheStats())
    oracle = h2o_oracle.H2OLayer(heavy=budget - window, recent=window)

    def stored(t):  # [1, Hkv, n, d] -> per stored head
        return t[0].repeat_interleave(n_stored // n_kv, dim=0)

    def draw(n):
        return [torch.randn(1, heads, n, dim).to(dtype) for heads in (n_kv, n_kv, n_heads)]

    keys, values, query = draw(total)
    for step in range(40):
        layer.update(keys, values)
        out = layer.attend(AttentionModule(), query, dim**-0.5)  # the prompt (then compressed), then a token a step
        expected = oracle.step(query[0].view(n_stored, per, -1, dim), stored(keys), stored(values))
        kept = [layer.positions[a:b].tolist() for a, b in zip(layer.offsets[:-1].tolist(), layer.offsets[1:].tolist())]
        assert kept == [row.nonzero().squeeze(1).tolist() for row in oracle.kept], step
        assert all(len(row) == budget for row in kept)  # memory stays at the budget
        # the running scores themselves, rounded to the model dtype at every step as the original's hh_score
        # (exactly in half precision; in float32 up to the summation order of the matmuls)
        tolerance = 1e-6 if dtype == torch.float32 else 0.0
        mine, theirs = layer.entry_scores.view(n_stored, budget), oracle.score[oracle.kept].view(n_stored, budget)
        torch.testing.assert_close(mine.float(), theirs.float(), atol=tolerance, rtol=tolerance)
        if step and dtype == torch.float32:
            torch.testing.assert_close(out[0, 0], expected.reshape(n_heads, dim), atol=1e-5, rtol=1e-5)
        keys, values, query = draw(1)


def test_h2o_decode_eviction_on_the_model(loaded, tokenizer):
    ids = torch.tensor([tokenizer("The capital of France is Paris. " * 12).input_ids])
    full = loaded.model.generate(ids, max_new_tokens=6, do_sample=False)
    with compressed(loaded.model, "h2o", 8000, decode="evict"):
        same = loaded.model.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(same, full)
    with compressed(loaded.model, "h2o", 48, decode="evict"), torch.no_grad():
        out = loaded.model.generate(ids, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    lengths = torch.stack([layer.offsets.diff() for layer in out.cache.layers])
    assert bool((lengths == 48).all()) and out.cache.get_seq_length() == ids.shape[1] + 5


# ---------------------------------------------------------------- KVzip


def test_kvzip_repeat_inputs_are_the_authors(tokenizer):
    head, suffix = chat_frame(tokenizer)
    assert tokenizer.decode(head) == SMOLLM2_PREFIX and tokenizer.decode(suffix) == CHATML_OPENER  # verbatim
    context = tokenizer(" The quick brown fox jumps over the lazy dog." * 12, add_special_tokens=False).input_ids
    ids = torch.tensor([head + context])
    passes = KVzip(KVzipOptions(chunk_size=50)).extra_passes(ids, tokenizer)

    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False)

    expected = kvzip_oracle.repeat_inputs(encode, context, encode(CHATML_OPENER), size=50, hint=8)
    assert [p.ids[0].tolist() for p in passes] == [repeat for _, repeat in expected]
    spans = [(len(head) + s, len(head) + min(s + 50, len(context))) for s in range(0, len(context), 50)]
    assert [(p.start, p.end) for p in passes] == spans
    next_prompt = kvzip_oracle.NEXT_PROMPT
    assert tokenizer.decode(passes[1].ids[0, : len(encode(next_prompt))]) == next_prompt  # trailing space kept
    assert passes[1].ids[0, len(encode(next_prompt)) : len(encode(next_prompt)) + 8].tolist() == context[42:50]
    plain = copy.copy(tokenizer)
    plain.chat_template = None
    assert tokenizer.decode(chat_frame(plain)[1]) == kvzip_oracle.OPENERS["fallback"]


def test_kvzip_default_chunks_are_the_authors(tokenizer):
    # 4100 context tokens: the authors' default chunk of 2000 gives passes of 2000, 2000 and 100
    head = tokenizer.encode(SMOLLM2_PREFIX, add_special_tokens=False)
    context = torch.randint(100, 40_000, (4100,), generator=torch.Generator().manual_seed(0)).tolist()
    passes = KVzip().extra_passes(torch.tensor([head + context]), tokenizer)

    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False)

    expected = kvzip_oracle.repeat_inputs(encode, context, encode(CHATML_OPENER))  # the authors' defaults
    assert [p.ids[0].tolist() for p in passes] == [repeat for _, repeat in expected]
    assert [p.end - p.start for p in passes] == [2000, 2000, 100]


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QWEN3_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.mark.parametrize(
    "template, family, derived",
    [
        (LLAMA3_TEMPLATE, "llama", "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
        (QWEN3_TEMPLATE, "qwen3", "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        (GEMMA3_TEMPLATE, "gemma3", "<end_of_turn>\n<start_of_turn>model\n"),
    ],
)
def test_kvzip_opener_is_the_authors_per_family(tokenizer, template, family, derived):
    # a tokenizer given the family's chat template (the markers are plain text in SmolLM2's vocabulary)
    family_tokenizer = copy.copy(tokenizer)
    family_tokenizer.chat_template = template
    assert tokenizer.decode(chat_frame(family_tokenizer)[1]) == kvzip_oracle.OPENERS[family]
    assert tokenizer.decode(chat_frame(family_tokenizer, "template")[1]) == derived
    other = copy.copy(tokenizer)  # a family the authors lack: the template's own opener
    other.chat_template = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    assert tokenizer.decode(chat_frame(other)[1]) == " [/INST]"


def _kvzip_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    prefix, span, n = 3, (5, 9), 7  # cache: 3 prefix tokens, context 3..13, this pass scores chunk 5..9
    q = torch.randn(1, 4, n, 16, generator=generator)
    k = torch.randn(1, 2, 13 + n, 16, generator=generator)
    return q, k, prefix, span


def test_kvzip_score_is_the_authors():
    from headprof.runtime.methods.kvzip import ReconstructionPass

    q, k, prefix, (start, end) = _kvzip_inputs()
    extra = ReconstructionPass(torch.zeros(1, q.shape[2], dtype=torch.long), start, end, prefix)
    mine = KVzip().score_pass(extra, q, k, 16**-0.5, 2)
    assert torch.equal(mine, kvzip_oracle.score(q, k, prefix, start, end))
    blocked = KVzip(KVzipOptions(block=3)).score_pass(extra, q, k, 16**-0.5, 2)  # memory only: equal up to rounding
    torch.testing.assert_close(blocked, mine, rtol=1e-6, atol=1e-7)
    # the softmax runs over prefix + own chunk + pass only: with the other context keys (3..5) it differs
    assert not torch.allclose(mine, kvzip_oracle.score(q, k, start, start, end))
    per_query_head = KVzip().score_pass(extra, q, k, 16**-0.5, 4)  # query layout: no max over the group
    assert torch.equal(per_query_head.view(1, 2, 2, -1).amax(2), mine)


def test_kvzip_pass_gives_the_attention_output_where_its_softmax_is_the_models():
    """A pass whose chunk holds the whole context scores from the softmax the model's attention takes: the output
    comes along (SDPA's to rounding; the layer then skips its own attention call), with the same scores. Not where
    the softmax leaves keys out (a later chunk), nor in bf16 (its logits are rounded to it)."""
    from headprof.attention import visible
    from headprof.runtime.methods.kvzip import ReconstructionPass

    generator = torch.Generator().manual_seed(3)
    prefix, context, n = 3, 13, 7
    q = torch.randn(1, 4, n, 16, generator=generator)
    k, v = torch.randn(2, 1, 2, context + n, 16, generator=generator)
    whole = ReconstructionPass(torch.zeros(1, n, dtype=torch.long), prefix, context, prefix)
    for block in (64, 3):
        scores, output = KVzip(KVzipOptions(block=block)).pass_attention(whole, q, k, v, 16**-0.5, 2)
        assert torch.equal(scores, KVzip(KVzipOptions(block=block)).score_pass(whole, q, k, 16**-0.5, 2))
        mask = visible(None, n, context + n, q.device)
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), attn_mask=mask, scale=16**-0.5
        )
        torch.testing.assert_close(output, sdpa.transpose(1, 2), rtol=1e-5, atol=1e-6)
    later = ReconstructionPass(torch.zeros(1, n, dtype=torch.long), 5, 9, prefix)
    assert KVzip().pass_attention(later, q, k, v, 16**-0.5, 2)[1] is None
    low = [t.bfloat16() for t in (q, k, v)]
    assert KVzip().pass_attention(whole, *low, 16**-0.5, 2)[1] is None


def _selected(selections: list[Selection], total: int) -> torch.Tensor:
    """Keep-masks `[L, S, total]` of per-layer selections (batch of one)."""
    masks = []
    for selection in selections:
        rows = torch.repeat_interleave(torch.arange(selection.lengths.numel()), selection.lengths)
        mask = torch.zeros(selection.lengths.numel(), total, dtype=torch.bool)
        mask[rows, selection.positions] = True
        masks.append(mask)
    return torch.stack(masks)


@pytest.mark.parametrize("selection, cutoff", [("global", "threshold"), ("global", "topk"), ("uniform", "threshold")])
def test_kvzip_selection_is_the_authors(selection, cutoff):
    n_layers, n_kv, prefix, total, budget = 3, 2, 4, 30, 12
    scores = torch.randperm(n_layers * n_kv * total, generator=torch.Generator().manual_seed(1)).double()
    scores = scores.view(n_layers, 1, n_kv, total) / scores.numel()  # distinct: the threshold rule has no ties
    scores[..., :prefix] = float("inf")  # no pass scores the template prefix
    method = KVzip(KVzipOptions(selection=selection, cutoff=cutoff))
    keep = _selected(method.select_layers(list(scores), torch.full((n_layers, n_kv), budget), 8), total)
    context = scores[..., prefix:]
    free = n_layers * n_kv * (budget - prefix)  # the budget counts the prefix, which is always kept
    if selection == "global":
        # the authors keep int(n * ratio) - 1 (strict > threshold): the ratio that keeps exactly `free`
        expected = kvzip_oracle.threshold_keep(context, (free + 1.5) / context.numel())
    else:
        expected = kvzip_oracle.uniform_keep(context, (budget - prefix + 0.5) / context.shape[-1])
    assert bool(keep.view(n_layers, 1, n_kv, total)[..., :prefix].all())
    assert torch.equal(keep.view(n_layers, 1, n_kv, total)[..., prefix:], expected)
    assert int(keep.sum()) == n_layers * n_kv * budget  # without ties, every rule keeps the budget


def test_kvzip_ties_at_the_threshold_are_dropped_as_the_authors_drop_them():
    scores = torch.tensor([[[[0.9, 0.5, 0.5, 0.5, 0.1]]]])
    keep = _selected(KVzip().select_layers(list(scores), torch.tensor([[3]]), 8), 5)
    expected = kvzip_oracle.threshold_keep(scores, 4.5 / 5)  # int(5 * 0.9) - 1 = 3 -> threshold 0.5, strict
    assert torch.equal(keep.view_as(expected), expected) and int(keep.sum()) == 1
    exact = _selected(KVzip(KVzipOptions(cutoff="topk")).select_layers(list(scores), torch.tensor([[3]]), 8), 5)
    assert int(exact.sum()) == 3 and bool(exact[0, 0, 0])  # the option: exactly the budget, topk picks ties


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options, reference", [({}, "threshold"), ({"cutoff": "topk"}, "topk")])
def test_kvzip_keeps_what_the_authors_keep_at_head_dim_128(dtype, options, reference):
    # scores in the model dtype from logits divided in it; in bf16 ties at the threshold are common
    for seed in range(2):
        mine, theirs = harness.kvzip_random(dtype, seed, reference, **options)
        assert torch.equal(mine, theirs), seed


@pytest.mark.parametrize(
    "dtype, size, budget",
    [(torch.float32, 64, 64), (torch.bfloat16, 2000, 64)],  # 4 chunks; the authors' one chunk of 2000, in bf16
)
def test_kvzip_on_the_model_keeps_what_the_authors_keep(loaded, tokenizer, dtype, size, budget):
    needle = load_needles(NEEDLES / "eval-needles-retrieval.jsonl")[0]
    probe = build_probes([needle], tokenizer, lengths=(300,), depths=(50,))[0]
    ids = tokenizer(probe.prompt[: probe.prompt.index("\n\nQuestion:")], add_special_tokens=False).input_ids
    model = loaded.model if dtype == torch.float32 else copy.deepcopy(loaded.model).to(dtype)
    n_chunks = -(-(len(ids) - len(tokenizer.encode(SMOLLM2_PREFIX))) // size)
    seen_lengths = []

    class Recording(KVzip):
        def pass_attention(self, extra, query, keys, values, scaling, n_stored):
            seen_lengths.append(keys.shape[2] - query.shape[2])  # the cache is back to the prompt for every pass
            return super().pass_attention(extra, query, keys, values, scaling, n_stored)

    method = Recording(KVzipOptions(chunk_size=size))
    mine, expected, _ = harness.kvzip_masks(model, tokenizer, ids, budget, method, SMOLLM2_PREFIX, CHATML_OPENER)
    assert seen_lengths == [len(ids)] * n_chunks * 30
    assert jaccard(mine, expected) == 1.0


def test_kvzip_refuses_passes_beyond_the_position_limit(loaded, tokenizer):
    config = loaded.model.config
    limit = config.max_position_embeddings
    ids = torch.tensor([tokenizer(" word" * 200, add_special_tokens=False).input_ids])
    try:
        config.max_position_embeddings = 300
        with pytest.raises(HeadprofError, match=r"200 tokens \+ its longest extra pass of 2\d\d need positions up to"):
            compressed(loaded.model, "kvzip", 64, tokenizer=tokenizer).prefill(ids)
    finally:
        config.max_position_embeddings = limit
    with pytest.raises(HeadprofError, match="needs the model's tokenizer"):
        compressed(loaded.model, "kvzip", 64).prefill(ids)
