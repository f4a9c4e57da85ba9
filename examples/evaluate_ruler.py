"""Evaluate KV-cache methods on RULER tasks generated offline: accuracy against KV bytes.

    python examples/evaluate_ruler.py                                   # 4 tasks x 2 samples at 1024 tokens
    python examples/evaluate_ruler.py --tasks niah_single_1 --lengths 512 --samples 1 --budgets 64

What `headprof eval --task ruler:...` does, through the library: generate the rows, render them with the
model's template, answer each under every method x budget and score with RULER's string match.
"""

from __future__ import annotations

import argparse

from headprof import evaluation as E
from headprof import workspace
from headprof.artifacts import load_scores
from headprof.models import load_model
from headprof.tasks import RulerConfig, TaskSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="niah_single_1,niah_single_2,niah_multikey_1,vt")
    parser.add_argument("--lengths", default="1024")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--methods", default="full,snapkv,headkv")
    parser.add_argument("--budgets", default="64,128")
    args = parser.parse_args()

    ruler = RulerConfig(lengths=tuple(int(x) for x in args.lengths.split(",")), samples=args.samples)
    source = TaskSource.parse(f"ruler:{args.tasks}", ruler)
    config = E.EvalConfig(tuple(args.methods.split(",")), tuple(int(b) for b in args.budgets.split(",")))
    config.validate()
    loaded = load_model(args.model)
    scores = (
        load_scores(workspace.reference_file(args.model, "scores.safetensors")) if "headkv" in config.methods else None
    )
    rows, notices = source.load(loaded.tokenizer, loaded.info.max_context)
    for notice in notices:
        print("notice:", notice)
    items = E.collect_items(loaded, [], rows, scores)
    records = E.evaluate(loaded, items, config, scores)
    for result in E.summarize(records):
        budget = "full cache" if result["budget"] is None else f"budget {result['budget']}"
        tasks = ", ".join(f"{t['task']} {t['score']:.0f}%" for t in result.get("tasks", []))
        print(f"{result['method']:>8} {budget:>12}: {result['kv_bytes'] / 2**20:6.2f} MiB  {tasks}")


if __name__ == "__main__":
    main()
