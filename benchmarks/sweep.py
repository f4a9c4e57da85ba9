"""Sweep-once evaluation: the time of a whole method x budget sweep as a multiple of one full-cache pass.

    python benchmarks/sweep.py [--probes 3] [--budgets 64,128,256,512] [--per-config] [--device cuda]

The first `--probes` evaluation probes of the embedded model (1024 tokens), greedy answers of 24 tokens as
`benchmarks/results.py` asks. Timed, each from a fresh results cache, model loaded once and one untimed
full-cache pass beforehand (the first pass of a process can pay one-time allocations; two runs without it measured
the unit at 11.3 and 7.9 s):
- the full cache alone (one prefill and one decode per probe: the unit);
- the sweep of every method x budget (one prefill per probe, plus KVzip's context prefill and reconstruction),
  each configuration decoded alone (`eval --decode-alone`: the same answers as running it alone);
- the same sweep with the compressed caches and the full cache decoded as one batch, of all probes at once (their
  prompts left-padded), KVzip's among them, and KVzip's context taken from the shared prefill (`eval`'s default),
  and how many of its records equal the exact sweep's (a difference is a rounding-level tie); and that sweep
  without KVzip;
- KVzip alone at one budget: its context prefill and its reconstruction pass (about one more prefill, the
  authors' algorithm) are part of any sweep that holds it, so this is a floor for the sweep with KVzip;
- with `--per-config`, every configuration alone (the path the sweep replaces), and whether the records match.
The multiples are printed with and without the model load (the issue's figure counted it in both).
"""

from __future__ import annotations

import argparse
import time

from headprof import evaluation as E
from headprof import workspace
from headprof.artifacts import load_scores
from headprof.models import load_model
from headprof.probes import load_probes

MODEL = "smollm2-135m"
METHODS = ("full", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv", "kvzip")


def timed(loaded, items, config, scores) -> tuple[float, list[E.EvalRecord]]:
    started = time.perf_counter()
    records = E.evaluate(loaded, items, config, scores)
    return time.perf_counter() - started, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--budgets", default="64,128,256,512")
    parser.add_argument("--per-config", action="store_true", help="also time every configuration alone")
    parser.add_argument("--device", default="cpu", help="where the model runs (cuda: a GPU, where decode dominates)")
    args = parser.parse_args()
    budgets = tuple(int(b) for b in args.budgets.split(","))
    started = time.perf_counter()
    loaded = load_model(MODEL, device=args.device)
    load_s = time.perf_counter() - started
    scores = load_scores(workspace.reference_file(MODEL, "scores.safetensors"))
    probes = [p for p in load_probes(workspace.reference_file(MODEL, "eval-probes.jsonl")) if p.length == 1024]
    items = E.items_from_probes(loaded.tokenizer, probes[: args.probes])
    tokens = sum(len(item.prompt_ids) for item in items) / len(items)
    every = f"{len(METHODS) - 1} methods x {len(budgets)} budgets + full"
    runs = {
        "full cache alone": E.EvalConfig(("full",), budgets, max_new_tokens=24),
        f"sweep, {every}, each decoded alone": E.EvalConfig(METHODS, budgets, max_new_tokens=24, decode_together=False),
        f"sweep, {every}, decoded together": E.EvalConfig(METHODS, budgets, max_new_tokens=24),
        "sweep without kvzip, decoded together": E.EvalConfig(METHODS[:-1], budgets, max_new_tokens=24),
        "kvzip alone at one budget (a floor of the sweep with it)": E.EvalConfig(
            METHODS[-1:], budgets[:1], max_new_tokens=24
        ),
    }
    if args.per_config:
        runs["every configuration alone"] = E.EvalConfig(METHODS, budgets, max_new_tokens=24, sweep=False)
    print(f"{len(items)} probes of {tokens:.0f} tokens on average, model load {load_s:.1f} s")
    print("| run | seconds | x full pass | x full pass, model load in both |")
    print("|---|---:|---:|---:|")
    timed(loaded, items[:1], runs["full cache alone"], scores)  # warm-up, untimed: the first pass pays allocations
    unit, records = None, {}
    for name, config in runs.items():
        seconds, records[name] = timed(loaded, items, config, scores)
        unit = unit or seconds
        print(f"| {name} | {seconds:.1f} | {seconds / unit:.2f} | {(seconds + load_s) / (unit + load_s):.2f} |")
    alone = records[f"sweep, {every}, each decoded alone"]
    together = records[f"sweep, {every}, decoded together"]
    same = sum(a.answer == t.answer and a.kv_bytes == t.kv_bytes for a, t in zip(alone, together))
    print(f"decoded together vs alone: {same}/{len(alone)} records with the same answer and bytes")
    if args.per_config:
        print(f"every configuration alone gives the sweep's records: {alone == records['every configuration alone']}")


if __name__ == "__main__":
    main()
