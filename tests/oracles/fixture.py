"""The committed Q/K fixture of the fidelity tests: post-RoPE queries and keys of the embedded model on one probe.

`tests/fixtures/fidelity-qk.safetensors` (float16, < 1 MB) holds, for layers 1, 14 and 27 of SmolLM2-135M on
the 262-token probe the runtime tests use (first evaluation needle, 300 tokens, depth 50): the keys of every
position (`keys.<l>`, `[1, 3, T, 64]`), the last 32 queries (`window_queries.<l>`, `[1, 9, 32, 64]`), and, for
layer 14 only (H2O reads every query), all queries (`queries.14`). Regenerate with
`python tests/oracles/fixture.py` (about 10 s); the tests upcast to float32, so both sides read the same numbers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

PATH = Path(__file__).resolve().parents[1] / "fixtures" / "fidelity-qk.safetensors"
LAYERS = (1, 14, 27)
ALL_QUERIES_LAYER = 14
WINDOW = 32
N_LAYERS = 30  # of the model, for PyramidKV's schedule
# the model's chat template before a user message's text (its system turn), written out: KVzip's prefix
CHAT_PREFIX = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\n"
)


def capture(loaded) -> dict[str, torch.Tensor]:
    """Run the probe once through a registered attention function that records each layer's query and keys."""
    from headprof import workspace
    from headprof.probes import build_probes, encode_probe, load_needles

    from oracles import register_recorder

    needle = load_needles(workspace.eval_needle_file("retrieval"))[0]
    probe = build_probes([needle], loaded.tokenizer, lengths=(300,), depths=(50,))[0]
    ids = torch.tensor([encode_probe(loaded.tokenizer, probe).prompt_ids])
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    register_recorder("fidelity_capture", seen)
    model = loaded.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("fidelity_capture")
    try:
        with torch.no_grad():
            model(ids, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    tensors = {"input_ids": ids.to(torch.int32)}
    for layer in LAYERS:
        query, key = seen[layer]
        tensors[f"keys.{layer}"] = key.half().contiguous()
        tensors[f"window_queries.{layer}"] = query[:, :, -WINDOW:].half().contiguous()
        if layer == ALL_QUERIES_LAYER:
            tensors[f"queries.{layer}"] = query.half().contiguous()
    return tensors


def load() -> dict[str, torch.Tensor]:
    """The fixture, float tensors upcast to float32."""
    from safetensors.torch import load_file

    return {name: t.float() if t.is_floating_point() else t for name, t in load_file(PATH).items()}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the oracles package
    from safetensors.torch import save_file

    from headprof.models import load_model

    save_file(capture(load_model("smollm2-135m", device="cpu")), PATH)
    print(f"wrote {PATH} ({PATH.stat().st_size} bytes)", file=sys.stderr)
