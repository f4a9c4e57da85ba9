"""Tiny random-weight causal LMs of the model families headprof supports, built from configs.

    model = tiny_model("gemma2")                 # fp32, eval(), seeded; no download
    model = tiny_model("gemma2", vocab=49152)    # to read probes made with the embedded model's tokenizer

Common sizes: 4 layers (Gemma 3: 6, so that its global layer sits at index 5 as in the real pattern), hidden
64, 4 query heads, 2 KV heads where the family has GQA, head_dim 16, vocab 1000, 512 positions, and a
sliding window (or chunk) of 16 positions, so that windows bind on the 48-token prompts the tests use.
What each family adds to plain Llama attention is in `WHAT`; the README's family table is built from it.
"""

from __future__ import annotations

from typing import Any

import torch

VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, WINDOW = 1000, 64, 4, 4, 2, 16, 16
ALTERNATING = ["sliding_attention", "full_attention"] * 2

_BASE: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "intermediate_size": 128,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "head_dim": HEAD_DIM,
    "max_position_embeddings": 512,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}
_GPT2_NAMES = {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_positions": 512}
_GPT2_DROPPED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
)
_MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}

# family -> (model_type, config overrides, keys of _BASE the config does not take)
CONFIGS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "llama": ("llama", {}, ()),
    "mistral": ("mistral", {"sliding_window": WINDOW}, ()),
    "qwen2": ("qwen2", {"use_sliding_window": False, "sliding_window": WINDOW}, ()),
    "qwen2-window": ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 2}, ()),
    "qwen3": ("qwen3", {}, ()),
    "phi3": ("phi3", {}, ()),
    "gemma": ("gemma", {"num_key_value_heads": 1}, ()),
    "gemma2": (
        "gemma2",
        {
            "sliding_window": WINDOW,
            "layer_types": ALTERNATING,
            "query_pre_attn_scalar": 32,
            "attn_logit_softcapping": 50.0,
            "final_logit_softcapping": 30.0,
        },
        (),
    ),
    "gemma3": (
        "gemma3_text",
        {
            "num_hidden_layers": 6,
            "sliding_window": WINDOW,
            "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
        },
        (),
    ),
    "olmo2": ("olmo2", {}, ()),
    "gpt-neox": (
        "gpt_neox",
        {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}},
        ("num_key_value_heads", "head_dim"),
    ),
    "gpt-oss": (
        "gpt_oss",
        {
            "sliding_window": WINDOW,
            "layer_types": ALTERNATING,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "rope_parameters": {
                "rope_type": "yarn",
                "factor": 4.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 128,
                "rope_theta": 150000.0,
            },
        },
        (),
    ),
    "cohere": ("cohere", {"use_qk_norm": False}, ()),
    "cohere2": (
        "cohere2",
        {"sliding_window": WINDOW, "layer_types": ["sliding_attention"] * 3 + ["full_attention"]},
        (),
    ),
    "starcoder2": ("starcoder2", {"sliding_window": WINDOW}, ()),
    "granite": (
        "granite",
        {"attention_multiplier": 0.125, "embedding_multiplier": 2.0, "residual_multiplier": 0.5, "logits_scaling": 4.0},
        (),
    ),
    "glm": ("glm", {}, ()),
    "mixtral": ("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}, ()),
    "qwen2-moe": ("qwen2_moe", {"num_experts": 4, "shared_expert_intermediate_size": 64, **_MOE}, ()),
    "qwen3-moe": ("qwen3_moe", {"num_experts": 4, **_MOE}, ()),
    "smollm3": ("smollm3", {"no_rope_layer_interval": 4}, ()),
    "phi": ("phi", {"partial_rotary_factor": 0.5}, ("num_key_value_heads", "head_dim")),
    "llama4": (
        "llama4_text",
        {
            "attention_chunk_size": WINDOW,
            "num_local_experts": 2,
            "num_experts_per_tok": 1,
            "intermediate_size_mlp": 128,
            "interleave_moe_layer_step": 2,
        },
        (),
    ),
    "gpt2": ("gpt2", _GPT2_NAMES, _GPT2_DROPPED),
    "gpt-bigcode": ("gpt_bigcode", {**_GPT2_NAMES, "multi_query": True}, _GPT2_DROPPED),
    # capture only: the runtime refuses MLA's latent cache
    "deepseek-v3": (
        "deepseek_v3",
        {
            "num_key_value_heads": HEADS,
            "n_routed_experts": 4,
            "n_shared_experts": 1,
            "n_group": 1,
            "topk_group": 1,
            "first_k_dense_replace": 1,
            "kv_lora_rank": 32,
            "q_lora_rank": None,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 16,
            "v_head_dim": 16,
            "num_mtp_layers": 0,
            **_MOE,
        },
        ("head_dim",),
    ),
    # Falcon (rotary, the new decoder architecture of Falcon-40B/180B): its attention reaches the registry from
    # transformers 5.25 on; supported or refused by what the installed version does (`ROUTED` below)
    "falcon": (
        "falcon",
        {"new_decoder_architecture": True, "num_kv_heads": KV_HEADS},
        ("intermediate_size", "num_key_value_heads", "head_dim"),
    ),
    # refused: ALiBi in the attention mask (falcon-alibi), attention outside the registry (bloom, gpt-neo),
    # linear-attention layers (qwen3-next)
    "falcon-alibi": (
        "falcon",
        {"alibi": True, "new_decoder_architecture": False, "multi_query": False},
        ("intermediate_size", "num_key_value_heads", "head_dim"),
    ),
    "bloom": (
        "bloom",
        {"n_layer": LAYERS, "n_head": HEADS},
        (
            "intermediate_size",
            "num_key_value_heads",
            "head_dim",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        ),
    ),
    "gpt-neo": (
        "gpt_neo",
        {"num_layers": LAYERS, "attention_types": [[["global", "local"], 2]], "window_size": WINDOW},
        ("intermediate_size", "num_key_value_heads", "head_dim", "num_hidden_layers"),
    ),
    "qwen3-next": (
        "qwen3_next",
        {
            "num_experts": 4,
            "shared_expert_intermediate_size": 64,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "layer_types": ["linear_attention"] * 3 + ["full_attention"],
            **_MOE,
        },
        (),
    ),
}

# What each supported family adds to plain Llama attention (the README's family table).
WHAT: dict[str, str] = {
    "llama": "GQA, RoPE",
    "mistral": "sliding window on every layer",
    "qwen2": "q/k/v bias",
    "qwen2-window": "q/k/v bias, sliding window on layers >= max_window_layers",
    "qwen3": "q/k RMSNorm per head",
    "phi3": "fused qkv projection",
    "gemma": "multi-query attention",
    "gemma2": "logit soft-capping, alternating sliding/global layers",
    "gemma3": "5 sliding : 1 global layers, q/k norm",
    "olmo2": "q/k norm over the whole projection",
    "gpt-neox": "partial rotary (25%), no GQA",
    "gpt-oss": "attention sinks, alternating sliding/global layers, MoE",
    "cohere": "parallel attention/MLP block",
    "cohere2": "3 sliding : 1 global layers (RoPE on sliding only)",
    "starcoder2": "sliding window on every layer, biases",
    "granite": "attention multiplier as scaling",
    "glm": "partial interleaved rotary",
    "mixtral": "MoE",
    "qwen2-moe": "MoE with a shared expert",
    "qwen3-moe": "MoE, q/k norm",
    "smollm3": "no RoPE on every 4th layer",
    "phi": "partial rotary, no GQA",
    "llama4": "chunked attention (3 chunked : 1 global), no RoPE on global layers",
    "gpt2": "learned positions, fused c_attn",
    "gpt-bigcode": "multi-query attention, learned positions",
    "deepseek-v3": "multi-head latent attention",
}
# Families whose attention reaches the registry on some transformers versions only: what they add, when they do.
VERSIONED: dict[str, str] = {"falcon": "fused qkv, grouped KV heads (new decoder architecture), parallel block"}


def tiny_config(name: str, vocab: int = VOCAB, **changes: Any) -> Any:
    """A fresh config of the family `name` (with `changes` to its fields)."""
    from transformers import AutoConfig

    model_type, overrides, dropped = CONFIGS[name]
    fields = {key: value for key, value in _BASE.items() if key not in dropped}
    return AutoConfig.for_model(model_type, **{**fields, **overrides, "vocab_size": vocab, **changes})


def tiny_model(
    name: str,
    vocab: int = VOCAB,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
    **changes: Any,
) -> Any:
    """A seeded random-weight model of the family `name`, in eval mode.

    transformers picks the attention implementation (SDPA, or eager for Gemma 2 and GPT-OSS) unless one is named.
    Generation does not stop at an end-of-sequence token, so that every test decodes the steps it asks for.
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = AutoModelForCausalLM.from_config(tiny_config(name, vocab, **changes), dtype=dtype, **extra).eval()
    model.generation_config.eos_token_id = None  # random weights: generation runs its full length
    return model


def routes_attention(name: str) -> bool:
    """Whether headprof serves the family on the installed transformers, found as a user finds it: switching a
    loaded model to headprof's capturing attention is refused in one line when its attention ignores the registry."""
    from headprof.capture import AttentionCapture
    from headprof.errors import HeadprofError

    try:
        with AttentionCapture(tiny_model(name)):
            return True
    except HeadprofError:
        return False


ROUTED = {name: routes_attention(name) for name in VERSIONED}
WHAT.update({name: what for name, what in VERSIONED.items() if ROUTED[name]})

CAPTURED = list(WHAT)  # capture equals eager attention
RUNTIME = [name for name in WHAT if name != "deepseek-v3"]  # every runtime method runs
REFUSED = [name for name, routed in ROUTED.items() if not routed] + ["falcon-alibi", "bloom", "gpt-neo", "qwen3-next"]


def token_ids(length: int = 48, batch: int = 1, seed: int = 1) -> torch.Tensor:
    """Random token ids above the special ones (pad 0, bos 1, eos 2)."""
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def capture_vs_eager(model: Any, ids: torch.Tensor, n_rows: int = 6) -> tuple[dict[int, torch.Tensor], tuple]:
    """The last `n_rows` attention rows headprof captures per layer, and transformers' eager attention
    probabilities (`output_attentions`) of the same forward: the reference capture must equal."""
    from headprof.capture import AttentionCapture

    captured: dict[int, torch.Tensor] = {}
    with torch.no_grad(), AttentionCapture(model), AttentionCapture.rows(n_rows, captured.__setitem__):
        model(ids, use_cache=False)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            eager = model(ids, use_cache=False, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(previous)
    return captured, eager


def random_scores(spec: Any) -> Any:
    """A score table to allocate HeadKV budgets from (when budgets cover the prompt, its values cannot matter)."""
    from headprof.artifacts import ScoreArtifact

    table = torch.rand(1, spec.n_layers, spec.n_heads, generator=torch.Generator().manual_seed(0))
    return ScoreArtifact(spec, ["p"], ["retrieval"], torch.tensor([True]), {"r2": table})


def expected_bytes(cache: Any, spec: Any, prompt: int, after: int, element: int = 4) -> int:
    """What a compressed cache must hold after `after` tokens past the prompt: the kept entries of the budgeted
    layers, the tokens after the prompt once per KV head, and the sliding-window layers' last `w - 1` tokens."""
    entry = 2 * spec.head_dim * element
    kept = sum(int(cache.layers[i].offsets[-1]) for i in spec.global_layers)
    recent = len(spec.global_layers) * spec.n_kv_heads * after
    windows = len(spec.window_layers) * spec.n_kv_heads * min(prompt + after, spec.sliding_window - 1)
    return entry * (kept + recent + windows)
