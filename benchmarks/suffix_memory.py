"""Peak memory of scoring a long probe after a shared prefix: the suffix in chunks (the default) vs in one forward.

    python benchmarks/suffix_memory.py [--length 8192] [--depth 10] [--chunks 2048,0]

A cached forward of n tokens over T keys makes transformers build an explicit `[n, T]` mask, and SDPA with an
explicit mask cannot take its flash kernel: at a shallow needle the suffix is most of the prompt, so the cost is
quadratic in T. `probe_scores.SUFFIX_CHUNK` bounds each forward to that many tokens (0 here: the whole suffix
at once, the behaviour before). Two probes of one needle group (so they share a prefix) at `--length` tokens,
teacher mode, the embedded model on the CPU; each chunk size in a fresh subprocess, peak resident memory
(VmHWM, reset after loading) above the loaded model, wall time, and the largest score difference between them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _peak_mib() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))


def worker(length: int, depth: float, chunk: int) -> dict:
    import torch

    from headprof import probe_scores, workspace
    from headprof.models import load_model
    from headprof.probes import build_probes, load_needles
    from headprof.scoring import ScoreConfig, score_probes

    loaded = load_model("smollm2-135m", device="cpu")
    needles = load_needles(workspace.needle_file("retrieval"))[:2]
    probes = build_probes(needles, loaded.tokenizer, lengths=(length,), depths=(depth,))
    probe_scores.SUFFIX_CHUNK = chunk or 10**9
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets VmHWM
    base = _peak_mib()
    start = time.perf_counter()
    art = score_probes(loaded, probes, ScoreConfig(), share_prefixes=True)
    seconds = time.perf_counter() - start
    scores = torch.stack([art.per_probe[m] for m in sorted(art.per_probe)]).flatten().tolist()
    return {"chunk": chunk, "peak_mib": _peak_mib() - base, "seconds": seconds, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--depth", type=float, default=10.0)
    parser.add_argument("--chunks", default="2048,0")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.length, args.depth, args.worker)))
        return
    rows = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        command = [sys.executable, __file__, "--length", str(args.length), "--depth", str(args.depth)]
        out = subprocess.run([*command, "--worker", str(chunk)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"2 probes of {args.length} tokens, needle at {args.depth:g}% depth, shared prefix, teacher mode, CPU")
    print("| suffix per forward | peak MiB above the model | seconds |\n|---|---:|---:|")
    for row in rows:
        name = f"{row['chunk']} tokens" if row["chunk"] else "whole suffix"
        print(f"| {name} | {row['peak_mib']:.0f} | {row['seconds']:.1f} |")
    diff = max(abs(a - b) for a, b in zip(rows[0]["scores"], rows[-1]["scores"]))
    print(f"largest per-probe score difference: {diff:.2e}")


if __name__ == "__main__":
    main()
