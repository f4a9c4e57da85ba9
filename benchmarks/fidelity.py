"""Kept sets of every method against its reference code's, on the committed Q/K fixture (and KVzip live).

    python benchmarks/fidelity.py [--budgets 64,128] [--windows 8,32] [--kvzip]

Prints, per method, GQA layout, window and budget, the Jaccard index of the (layer, head, position) triples
headprof keeps and those the reference's selection keeps (oracles in tests/oracles/, one per reference
repository, fed the same post-RoPE queries and keys of the embedded model: tests/oracles/fixture.py).
`--kvzip` also runs KVzip on the model (its queries come from its own reconstruction passes) against the
authors' scoring run with transformers alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the oracles

from headprof import workspace  # noqa: E402
from headprof.artifacts import load_scores  # noqa: E402

from oracles import fixture, harness, jaccard  # noqa: E402

METHODS = ("streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv")


def fixture_rows(budgets: list[int], windows: list[int]) -> None:
    data = fixture.load()
    scores = load_scores(workspace.reference_file("smollm2-135m", "scores.safetensors"))
    print(f"{'method':>12} {'gqa':>5} {'w':>3} " + " ".join(f"{'B=' + str(b):>7}" for b in budgets))
    for name in METHODS:
        for gqa in ("kv", "query"):
            for window in windows:
                cells = []
                for budget in budgets:
                    both = either = 0
                    for layer in fixture.LAYERS:
                        if name == "h2o" and layer != fixture.ALL_QUERIES_LAYER:
                            continue
                        q = data[f"queries.{layer}"] if name == "h2o" else data[f"window_queries.{layer}"]
                        case = harness.Case(name, budget, window, layer, gqa, scores)
                        a, b = harness.jaccard_pair(case, q, data[f"keys.{layer}"])
                        both, either = both + a, either + b
                    cells.append(f"{both / either:>7.3f}")
                print(f"{name:>12} {gqa:>5} {window:>3} " + " ".join(cells))


def kvzip_rows(budgets: list[int]) -> None:
    from headprof.models import load_model
    from headprof.probes import build_probes, load_needles
    from headprof.runtime.methods.kvzip import KVzip, KVzipOptions

    loaded = load_model("smollm2-135m", device="cpu")
    needle = load_needles(workspace.eval_needle_file("retrieval"))[0]
    probe = build_probes([needle], loaded.tokenizer, lengths=(300,), depths=(50,))[0]
    context = probe.prompt[: probe.prompt.index("\n\nQuestion:")]
    ids = loaded.tokenizer(context, add_special_tokens=False).input_ids
    for selection in ("global", "uniform"):
        cells = []
        for budget in budgets:
            method = KVzip(KVzipOptions(selection=selection))
            mine, expected, _ = harness.kvzip_masks(loaded.model, loaded.tokenizer, ids, budget, method)
            cells.append(f"{jaccard(mine, expected):>7.3f}")
        print(f"{'kvzip':>12} {'kv':>5} {selection:>7} " + " ".join(cells) + f"   ({len(ids)} tokens, live)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="64,128")
    parser.add_argument("--windows", default="8,32")
    parser.add_argument("--kvzip", action="store_true")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    fixture_rows(budgets, [int(w) for w in args.windows.split(",")])
    if args.kvzip:
        kvzip_rows(budgets)


if __name__ == "__main__":
    main()
