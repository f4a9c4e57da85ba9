"""Profile a model's attention heads and turn the scores into per-head KV budgets, in Python.

    python examples/profile_model.py                        # the embedded SmolLM2-135M, 1024-token probes
    python examples/profile_model.py --model llama3-8b --lengths 4096,8192 --needles 20

What `headprof probes build`, `headprof score` and `headprof allocate` do, through the library: build
needle-in-a-haystack probes with the model's tokenizer, score every head on them (captured attention),
and allocate HeadKV budgets from the r2 scores. Writes `scores.safetensors` and `alloc-b<B>.safetensors`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from headprof import workspace
from headprof.allocation import AllocConfig, allocate_artifact
from headprof.artifacts import load_scores, save_alloc, save_scores
from headprof.heads import top_heads
from headprof.models import load_model
from headprof.probes import build_probes, load_needles
from headprof.scoring import score_probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="alias, hub id, local folder or .gguf file")
    parser.add_argument("--lengths", default="1024", help="probe lengths in tokens, comma-separated")
    parser.add_argument("--depths", default="10,50,90", help="needle depths in percent, comma-separated")
    parser.add_argument("--needles", type=int, default=10, help="needles of each kind (retrieval, reasoning)")
    parser.add_argument("--budget", type=int, default=128, help="mean KV entries per head")
    parser.add_argument("--out", type=Path, default=Path("profile-out"), help="output folder")
    args = parser.parse_args()

    loaded = load_model(args.model)
    needles = [
        n for kind in ("retrieval", "reasoning") for n in load_needles(workspace.needle_file(kind))[: args.needles]
    ]
    lengths = tuple(int(x) for x in args.lengths.split(","))
    depths = tuple(float(x) for x in args.depths.split(","))
    probes = build_probes(needles, loaded.tokenizer, lengths=lengths, depths=depths, tokenizer_name=args.model)
    print(f"{len(probes)} probes ({len(needles)} needles x {len(lengths)} lengths x {len(depths)} depths)")

    scores = score_probes(
        loaded, probes, on_probe=lambda r: print(f"  {r.probe_id}: {'right' if r.right else 'wrong'}")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    save_scores(args.out / "scores.safetensors", scores)
    scores = load_scores(args.out / "scores.safetensors")  # as read back: with its file hash, which allocations cite
    print(
        "top r2 heads (layer, head, score):", [tuple(round(v, 3) for v in h) for h in top_heads(scores.scores("r2"), 5)]
    )

    alloc = allocate_artifact(scores, AllocConfig(args.budget, gqa="kv"), "r2", args.out / "scores.safetensors")
    save_alloc(args.out / f"alloc-b{args.budget}.safetensors", alloc)
    print(f"wrote {args.out / 'scores.safetensors'} and {args.out / f'alloc-b{args.budget}.safetensors'}")


if __name__ == "__main__":
    main()
