"""Head scores captured in bfloat16 against the committed float32 reference, on the embedded model.

    python benchmarks/capture_bf16.py [--every 1] [--dtype bfloat16]

Scores the committed probe set (teacher mode, every `--every`-th probe) with the model cast to `--dtype`
and compares with the packaged reference `scores.safetensors` (float32, same probes): the largest
|difference| of a per-probe head score and of a head's mean score, the Spearman correlation of the head
means and the overlap of the top-10 heads, for r2 and retrieval. Attention rows are computed in float32
from the low-precision queries and keys, so the scores move only as much as the forward moves them.
"""

from __future__ import annotations

import argparse
import copy

import torch

from headprof import workspace
from headprof.artifacts import load_scores
from headprof.heads import rank_agreement
from headprof.models import LoadedModel, load_model
from headprof.probes import load_probes
from headprof.scoring import ScoreConfig, score_probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = parser.parse_args()
    loaded = load_model("smollm2-135m", device="cpu")
    low = LoadedModel(
        copy.deepcopy(loaded.model).to(getattr(torch, args.dtype)), loaded.tokenizer, loaded.spec, loaded.info
    )
    reference = load_scores(workspace.reference_file("smollm2-135m", "scores.safetensors"))
    probes = load_probes(workspace.reference_file("smollm2-135m", "probes.jsonl"))
    chosen = list(range(0, len(probes), args.every))
    scored = score_probes(low, probes, ScoreConfig(mode=reference.meta["mode"]), select=chosen)
    rows = [reference.probe_ids.index(pid) for pid in scored.probe_ids]
    print(f"{args.dtype} vs float32 reference, {len(chosen)} of {len(probes)} probes (teacher mode), CPU")
    print(f"{'score':>10} {'per-probe max':>14} {'mean max':>9} {'spearman':>9} {'top-10':>7}")
    for method in scored.methods:
        mine, ref = scored.per_probe[method], reference.per_probe[method][rows]
        means = mine.mean(0), ref.mean(0)
        agreement = rank_agreement(means[0], means[1], 10)
        print(
            f"{method:>10} {float((mine - ref).abs().max()):14.4f} {float((means[0] - means[1]).abs().max()):9.4f} "
            f"{agreement['spearman']:9.4f} {agreement['top10_overlap']:7.1f}"
        )


if __name__ == "__main__":
    main()
