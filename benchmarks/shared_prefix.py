"""Scoring with shared prefixes against the per-probe path, on the embedded model's packaged probe set.

    python benchmarks/shared_prefix.py [--needles 20]

Probes of one length and depth share the haystack before their needles, so `score_probes` runs those
tokens once per group and each probe only the rest (`share_prefixes=True`, the default). This scores the
probes of the first `--needles` needles (all their lengths and depths) both ways, teacher mode, and prints
the wall time of each, their ratio and the largest difference of the per-probe scores.
"""

from __future__ import annotations

import argparse
import time

from headprof import workspace
from headprof.models import load_model
from headprof.probes import load_probes
from headprof.scoring import ScoreConfig, score_probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--needles", type=int, default=20)
    args = parser.parse_args()
    loaded = load_model("smollm2-135m", device="cpu")
    probes = load_probes(workspace.reference_file("smollm2-135m", "probes.jsonl"))
    needles = list(dict.fromkeys(p.needle_id for p in probes))[: args.needles]
    chosen = [i for i, p in enumerate(probes) if p.needle_id in needles]
    seconds, arts = {}, {}
    for share in (False, True):
        start = time.perf_counter()
        arts[share] = score_probes(loaded, probes, ScoreConfig(), select=chosen, share_prefixes=share)
        seconds[share] = time.perf_counter() - start
    diff = max(float((arts[True].per_probe[m] - arts[False].per_probe[m]).abs().max()) for m in arts[True].per_probe)
    print(f"{len(chosen)} probes of {len(needles)} needles, teacher mode, CPU")
    print(
        f"per-probe path {seconds[False]:.1f} s, shared prefixes {seconds[True]:.1f} s: "
        f"{seconds[True] / seconds[False]:.2f}x; largest score difference {diff:.2e}"
    )


if __name__ == "__main__":
    main()
