"""Allocation policies at equal bytes on needles the scores never saw: tuned on validation, reported on test.

    headprof probes build --generated --split validation --count 40 --lengths 1536 --out probes-validation.jsonl
    headprof probes build --generated --split test --count 40 --lengths 1536 --out probes-test.jsonl
    python benchmarks/policies.py --validation probes-validation.jsonl --test probes-test.jsonl \
        [--validation-needles 10] [--test-needles 20] [--budgets 32,64,128] [--out policies.json]

The embedded model with its packaged r2 scores; the first 10 validation and 20 test needles (x 2 depths) by
default, which fits in about an hour on a shared 2-core machine. `headprof.tune` ranks every candidate
(policy x parameters x window, `tune.grid`) on the validation probes, then answers the test probes under the
full cache, HeadKV's pool as published (beta 1.2, window 32; 8 below B=64) and each policy's best candidate on
validation, all run by HeadKV's selection with spill, so each column holds exactly uniform B's bytes. Prints
per budget: test accuracy with its 95% needle-cluster bootstrap interval, the share of the full cache's
accuracy, the paired difference against published HeadKV (interval over needles) and the mean KV bytes at
the end of the answer (the answer's own tokens included, so columns differ by their answers' lengths);
`--out` keeps the whole payload.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from headprof import tune
from headprof.artifacts import load_scores
from headprof.evaluation import items_from_probes
from headprof.fileio import sha256_file
from headprof.models import load_model
from headprof.probes import load_probes

MODEL = "smollm2-135m"
SCORES = Path(__file__).resolve().parent.parent / "headprof" / "data" / "reference" / MODEL / "scores.safetensors"


def split(loaded, path: str, needles: int | None) -> tune.ProbeSplit:
    probes = load_probes(path)
    if needles:
        keep = list(dict.fromkeys(p.needle_id for p in probes))[:needles]
        probes = [p for p in probes if p.needle_id in keep]
    return tune.ProbeSplit(probes, items_from_probes(loaded.tokenizer, probes), path, sha256_file(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validation", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--validation-needles", type=int, default=10)
    parser.add_argument("--test-needles", type=int, default=20)
    parser.add_argument("--budgets", default="32,64,128")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out")
    args = parser.parse_args()
    started = time.perf_counter()
    loaded = load_model(MODEL, device="cpu")
    validation = split(loaded, args.validation, args.validation_needles)
    test = split(loaded, args.test, args.test_needles)
    config = tune.TuneConfig(tuple(int(b) for b in args.budgets.split(",")), args.max_new_tokens)
    config.validate()

    def progress(name: str, total: int):
        done = [0]

        def tick() -> None:
            done[0] += 1
            print(f"{name} {done[0]}/{total} {time.perf_counter() - started:.0f}s", flush=True)

        return tick

    result = tune.tune(loaded, load_scores(SCORES), SCORES, validation, test, config, progress)
    payload = result.payload()
    payload["seconds"] = round(time.perf_counter() - started)
    payload["command"] = vars(args)
    print(f"validation: {validation.record()}\ntest: {test.record()}")
    for budget, block in payload["budgets"].items():
        full = block["test"][0]
        print(f"\nB={budget}: pick on validation {block['pick']} ({block['pick_validation_accuracy']:.3f})")
        print("| column | test acc [95% CI] | % of full | vs published HeadKV [95% CI] | KV MiB |")
        print("|---|---|---|---|---|")
        for row in block["test"]:
            low, high = row["interval"]
            share = f"{100 * row['accuracy'] / full['accuracy']:.0f}%" if full["accuracy"] else "-"
            diff = "-"
            if "vs_headkv" in row:
                d_low, d_high = row["vs_headkv_interval"]
                diff = f"{row['vs_headkv']:+.3f} [{d_low:+.3f}, {d_high:+.3f}]"
            name = row["name"] + (" (pick)" if row["pick"] else "") + (" (published)" if row["published"] else "")
            print(
                f"| {name} | {row['accuracy']:.3f} [{low:.3f}, {high:.3f}] | {share} | {diff} | "
                f"{row['kv_bytes'] / 2**20:.2f} |"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\n{payload['seconds']} s")


if __name__ == "__main__":
    main()
