"""The bridge in kvpress's own environment (kvpress pins transformers < 5.3): a tiny random Llama, a headprof
allocation file written as `headprof allocate --gqa kv` writes it, and kvpress's hooks doing the rest."""

from __future__ import annotations

import json

import pytest
import torch
from kvpress import KnormPress, SnapKVPress
from safetensors.torch import save_file
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from headprof_kvpress import HeadprofBudgetPress, read_allocation

BUDGETS = torch.tensor([[10, 20], [30, 5]], dtype=torch.int32)  # [layers, KV heads], window included
WINDOW = 4


def allocation(path, budgets=BUDGETS, gqa="kv"):
    meta = {"format": "headprof.alloc/1", "gqa": gqa, "window": WINDOW, "model": {"model_id": "tiny"}}
    save_file({"budgets": budgets}, str(path), metadata={"headprof": json.dumps(meta)})
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("scorer", [KnormPress(), SnapKVPress(window_size=WINDOW)])
def test_each_kv_head_keeps_its_budget_and_the_window(model, tmp_path, scorer):
    press = HeadprofBudgetPress.from_allocation(allocation(tmp_path / "a.safetensors"), scorer)
    ids = torch.randint(0, 100, (1, 40))
    cache = DynamicCache()
    with torch.no_grad(), press(model):
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        for layer in model.model.layers:
            batch, head, position = layer.self_attn.masked_key_indices
            for h in range(2):
                masked = position[head == h]
                assert len(masked) == 40 - int(BUDGETS[layer.self_attn.layer_idx, h])
                assert not bool((masked >= 40 - WINDOW).any())  # the window is always kept
        model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)  # decoding reads the masked cache


def test_refusals(model, tmp_path):
    with pytest.raises(ValueError, match="--gqa kv"):
        read_allocation(allocation(tmp_path / "q.safetensors", gqa="query"))
    press = HeadprofBudgetPress.from_allocation(allocation(tmp_path / "w.safetensors", BUDGETS[:1]), KnormPress())
    with pytest.raises(ValueError, match="made for another model"), press(model):
        pass
    with pytest.raises(AttributeError, match="not a compression_ratio"):
        press.compression_ratio = 0.5
