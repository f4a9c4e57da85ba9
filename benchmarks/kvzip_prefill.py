"""KVzip's prefill (prefill + chunked reconstruction + compression) against a plain prefill, on the embedded model.

    python benchmarks/kvzip_prefill.py [--lengths 2048,6144] [--budget 128] [--repeats 2]

For each context length: the plain prefill of the context (transformers' own cache), KVzip's (`Press.prefill`:
the prefill, one reconstruction pass of up to 2000 context tokens per chunk on the full cache, the global
selection), their ratio, the number of passes and the highest position a pass reaches against the model's
limit. Then the shortest context KVzip refuses on this model (prompt + longest pass beyond the limit).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from headprof import workspace
from headprof.errors import HeadprofError
from headprof.evaluation import items_from_probes
from headprof.models import load_model
from headprof.probes import build_probes, load_needles
from headprof.runtime import compressed
from headprof.runtime.methods.kvzip import KVzip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="2048,6144")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    loaded = load_model("smollm2-135m", device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    limit = model.config.max_position_embeddings
    needle = load_needles(workspace.eval_needle_file("retrieval"))[0]
    print(f"budget {args.budget}, fp32, CPU ({torch.get_num_threads()} threads), median of {args.repeats}")
    header = ("tokens", "plain s", "kvzip s", "multiple", "passes", "top position", "limit")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 8, 8, 8, 6, 12, 6))))
    for length in (int(x) for x in args.lengths.split(",")):
        probe = build_probes([needle], tokenizer, lengths=(length,), depths=(50,))[0]
        item = items_from_probes(tokenizer, [probe])[0]
        ids = torch.tensor([item.prompt_ids[: item.context_tokens]])
        plain, zipped = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            with torch.no_grad():
                model(ids, use_cache=True, logits_to_keep=1)
            plain.append(time.perf_counter() - started)
            press = compressed(model, "kvzip", args.budget, tokenizer=tokenizer)
            press.prefill(ids)
            zipped.append(press.stats.prefill_seconds)
        passes = KVzip().extra_passes(ids, tokenizer)
        top = ids.shape[1] + max(p.ids.shape[1] for p in passes)
        a, b = statistics.median(plain), statistics.median(zipped)
        print(f"{ids.shape[1]:>6} {a:>8.2f} {b:>8.2f} {b / a:>7.2f}x {len(passes):>6} {top:>12} {limit:>6}")
    # the shortest context whose reconstruction would run past the model's positions: refused before any work
    filler = torch.tensor([tokenizer(" word" * limit, add_special_tokens=False).input_ids[:limit]])
    longest = max(p.ids.shape[1] for p in KVzip().extra_passes(filler, tokenizer))  # a full 2000-token chunk
    refused = limit - longest + 1
    try:
        compressed(model, "kvzip", args.budget, tokenizer=tokenizer).prefill(filler[:, :refused])
    except HeadprofError as exc:
        print(f"longest pass {longest} tokens: contexts up to {refused - 1} run; {refused} tokens: error: {exc}")


if __name__ == "__main__":
    main()
