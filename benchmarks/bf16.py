"""Decode logits in bfloat16 (or float16): every method's compressed cache against the full cache, and the floor
low precision itself sets, on the embedded model.

    python benchmarks/bf16.py [--length 1024] [--probes 2] [--max-new-tokens 16] [--dtype bfloat16]

The embedded model is cast to `--dtype`. Every budget covers the prompt, so a method's cache holds what the
full cache holds and only the decode arithmetic differs. Each method's greedy tokens are checked against the
full cache's, and its logits compared with the full cache's on the same steps (teacher-forced where tokens
differ): max and mean |difference| over the answer steps and the vocabulary, worst probe. `floor` (max): the
full cache (transformers' DynamicCache + SDPA) against the same prompt pass followed by float32 decode
attention, SDPA's own low-precision error and the scale the methods are judged by (tests/numerics.py
explains the bound of twice the floor). The last line compares the prompt pass's last logits with the model
run in float32 on the same rounded weights: the whole forward's rounding error, attention and matmuls.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from headprof import workspace
from headprof.artifacts import load_scores
from headprof.models import load_model
from headprof.probes import build_probes, encode_probe, load_needles

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the measuring code the tests use
from numerics import Comparison, low_precision_errors  # noqa: E402

ORDER = ["streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv", "kvzip"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--probes", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--methods", default=",".join(ORDER))
    parser.add_argument("--gqa", default="kv", choices=["kv", "query"])
    args = parser.parse_args()
    loaded = load_model("smollm2-135m", device="cpu")
    low = copy.deepcopy(loaded.model).to(getattr(torch, args.dtype))
    wide = copy.deepcopy(low).float()  # the same rounded weights, float32 arithmetic
    scores = load_scores(workspace.reference_file("smollm2-135m", "scores.safetensors"))
    needles = load_needles(workspace.eval_needle_file("retrieval"))[: args.probes]
    probes = build_probes(needles, loaded.tokenizer, lengths=(args.length,), depths=(50,))
    methods = [(m, args.gqa) for m in args.methods.split(",")]
    worst: dict[str, Comparison] = {}
    whole = 0.0
    for probe in probes:
        ids = torch.tensor([encode_probe(loaded.tokenizer, probe).prompt_ids])
        floor, results = low_precision_errors(
            low, ids, methods, args.max_new_tokens, scores=scores, tokenizer=loaded.tokenizer
        )
        for name, result in [("floor", Comparison(floor, 0.0, True)), *results.items()]:
            previous = worst.get(name, Comparison(0.0, 0.0, True))
            worst[name] = Comparison(
                max(previous.worst, result.worst),
                max(previous.mean, result.mean),
                previous.same_tokens and result.same_tokens,
            )
        with torch.no_grad():
            diff = low(ids, logits_to_keep=1).logits.float() - wide(ids, logits_to_keep=1).logits
        whole = max(whole, float(diff.abs().max()))
    print(
        f"{args.dtype}, {len(probes)} probes of ~{ids.shape[1]} tokens, {args.max_new_tokens} new tokens, "
        f"budgets cover the prompt, gqa {args.gqa}, CPU"
    )
    print(f"{'':>20} {'max':>7} {'mean':>7} {'same tokens':>12}")
    for name, result in worst.items():
        mean = f"{result.mean:7.4f}" if name != "floor" else f"{'':>7}"
        print(f"{name:>20} {result.worst:7.4f} {mean} {'yes' if result.same_tokens else 'NO':>12}")
    print(f"fp32 model on the same weights vs {args.dtype}, prompt pass logits, max: {whole:.4f}")


if __name__ == "__main__":
    main()
