"""Compressed-cache generation vs the full cache on the embedded model.

    python benchmarks/runtime.py [--lengths 2048,6144] [--budget 128] [--probes-per-length 6,2]

For each prompt length and method: KV bytes compressed / full (at the end of generation),
decode time per token, compression time as a share of prefill time, padding bytes, and
answer correctness (gold answer contained in the greedy answer) on retrieval probes built
from the evaluation needles. HeadKV budgets come from the committed reference scores.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from headprof import workspace
from headprof.artifacts import load_scores
from headprof.evaluation import items_from_probes
from headprof.models import load_model
from headprof.probes import build_probes, load_needles
from headprof.runtime import METHODS, compressed
from headprof.runtime.generation import generate_answer

ORDER = ["full", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv", "kvzip"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="2048,6144")
    parser.add_argument("--probes-per-length", default="6,2")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--methods", default=",".join(ORDER))
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    loaded = load_model("smollm2-135m", device="cpu")
    scores = load_scores(workspace.reference_file("smollm2-135m", "scores.safetensors"))
    needles = load_needles(workspace.eval_needle_file("retrieval"))
    methods = [m for m in args.methods.split(",") if m in METHODS]
    print(f"budget {args.budget}, window 32, gqa kv, fp32, {args.max_new_tokens} new tokens, CPU")
    print(
        f"{'tokens':>6} {'method':>12} {'correct':>8} {'KV MiB':>7} {'/full':>6} {'ms/token':>9} {'vs full':>8} "
        f"{'prefill s':>9} {'compress':>9} {'padding B':>9}"
    )
    for length, count in zip(
        (int(x) for x in args.lengths.split(",")), (int(x) for x in args.probes_per_length.split(","))
    ):
        probes = build_probes(needles[:count], loaded.tokenizer, lengths=(length,), depths=(50,))
        rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for method in methods:
            press = compressed(
                loaded.model, method, args.budget, scores=scores, tokenizer=loaded.tokenizer, info=loaded.info
            )
            for probe, item in zip(probes, items_from_probes(loaded.tokenizer, probes)):
                result = generate_answer(loaded, press, item.prompt_ids, item.context_tokens, args.max_new_tokens)
                row = rows[method]
                row["correct"] += probe.answer.lower() in result.answer.lower()
                row["kv"] += result.kv_bytes / len(probes)
                row["ratio"] += result.kv_bytes / result.kv_bytes_full / len(probes)
                row["ms"] += 1000 / max(result.decode_tokens_per_s, 1e-9) / len(probes)
                row["prefill"] += result.prefill_s / len(probes)
                row["compress"] += result.compress_s / max(result.prefill_s, 1e-9) / len(probes)
                row["padding"] += result.padding_bytes
                row["tokens"] = result.prompt_tokens
        full_ms = rows["full"]["ms"] if "full" in rows else None
        for method in methods:
            row = rows[method]
            speed = f"{row['ms'] / full_ms:.2f}x" if full_ms else "-"
            print(
                f"{int(row['tokens']):>6} {method:>12} {int(row['correct']):>4}/{len(probes):<3} "
                f"{row['kv'] / 2**20:>7.2f} {row['ratio']:>6.3f} {row['ms']:>9.1f} {speed:>8} "
                f"{row['prefill']:>9.2f} {row['compress']:>8.1%} {int(row['padding']):>9}"
            )


if __name__ == "__main__":
    main()
