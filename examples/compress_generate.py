"""Compress the KV cache with a headprof allocation inside your own generation loop.

    python examples/compress_generate.py                            # HeadKV budgets from the packaged scores
    python examples/compress_generate.py --alloc profile-out/alloc-b128.safetensors --budget 128

The prompt runs once under `with press:` (attended exactly, then compressed to the per-head budgets), and the
loop feeds one token at a time, as a hand-written sampler or a server would; `model.generate` works the same.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from headprof import workspace
from headprof.allocation import AllocConfig, allocate_artifact
from headprof.artifacts import load_alloc, load_scores
from headprof.models import load_model
from headprof.runtime import cache_bytes, compressed

CONTEXT = (
    "The lighthouse keeper wrote in his log every evening. "
    + "Waves rolled against the rocks and the gulls circled the tower. " * 12
    + "The code to the supply locker is 7341. "
    + "Fog came in from the sea and the lamp turned through the night. " * 12
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--alloc", type=Path, help="allocation artifact (default: HeadKV from the packaged scores)")
    parser.add_argument("--budget", type=int, default=64, help="mean budget when allocating from the scores")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    loaded = load_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.alloc:
        alloc = load_alloc(args.alloc)
    else:
        scores_path = workspace.reference_file(args.model, "scores.safetensors")
        alloc = allocate_artifact(load_scores(scores_path), AllocConfig(args.budget, gqa="kv"), "r2", scores_path)
    messages = [
        {"role": "user", "content": CONTEXT + "\n\nWhat is the code to the supply locker? Answer with the number only."}
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"].to(loaded.device)

    press = compressed(model, "headkv", allocation=alloc, tokenizer=tokenizer)
    answer: list[int] = []
    with press, torch.no_grad():
        out = model(input_ids=ids, use_cache=True)  # the prompt: attended exactly, then compressed
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        for _ in range(args.max_new_tokens):
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            if int(token) == tokenizer.eos_token_id:
                break
            answer.append(int(token))
            out = model(input_ids=token, cache=cache, use_cache=True)
    sizes = cache_bytes(cache)
    print("answer:", tokenizer.decode(answer, skip_special_tokens=True).strip())
    stats = press.stats
    print(
        f"prompt {stats.prompt_tokens} tokens; KV {sizes['kv_bytes'] / 2**20:.2f} MiB; compressed: {stats.compressed}"
    )


if __name__ == "__main__":
    main()
