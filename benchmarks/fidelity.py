"""Kept sets of every method against its reference code's, on the committed Q/K fixture (and KVzip live).

    python benchmarks/fidelity.py [--budgets 64,128] [--windows 8,32] [--dtypes fp32,bf16,fp16] [--kvzip]
    python benchmarks/fidelity.py --shapes [--seeds 5]

Prints, per method, dtype, GQA layout, window and budget, the Jaccard index of the (layer, head, position) triples
headprof keeps and those the reference's selection keeps (oracles in tests/oracles/, one per reference
repository, fed the same post-RoPE queries and keys of the embedded model: tests/oracles/fixture.py).
`--kvzip` also runs KVzip on the model (its queries come from its own reconstruction passes) against the
authors' scoring run with transformers alone. `--shapes` prints, per method and dtype (float32, bf16, fp16),
the Jaccard range over `--seeds` random Q/K at Llama-3-8B's shape (head dim 128, 8 query heads on 2 KV heads,
T=700, B=128, w=8, KV-head layout): the fixture's head dim of 64 hides how the logits are rounded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the oracles

from headprof import workspace  # noqa: E402
from headprof.artifacts import load_scores  # noqa: E402

from oracles import fixture, harness, jaccard, kvzip  # noqa: E402

METHODS = ("streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "headkv")


def fixture_rows(budgets: list[int], windows: list[int], dtypes: list[str]) -> None:
    scores = load_scores(workspace.reference_file("smollm2-135m", "scores.safetensors"))
    print(f"{'method':>12} {'dtype':>5} {'gqa':>5} {'w':>3} " + " ".join(f"{'B=' + str(b):>7}" for b in budgets))
    for name in METHODS:
        for dtype in dtypes:
            data = {key: t.to(DTYPES[dtype]) if t.is_floating_point() else t for key, t in fixture.load().items()}
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
                    print(f"{name:>12} {dtype:>5} {gqa:>5} {window:>3} " + " ".join(cells))


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
            opener = kvzip.OPENERS["qwen"]  # the authors' ChatML opener
            mine, expected, _ = harness.kvzip_masks(
                loaded.model, loaded.tokenizer, ids, budget, method, fixture.CHAT_PREFIX, opener
            )
            cells.append(f"{jaccard(mine, expected):>7.3f}")
        print(f"{'kvzip':>12} {'kv':>5} {selection:>7} " + " ".join(cells) + f"   ({len(ids)} tokens, live)")


SHAPE_ROWS = (
    ("snapkv", {}, "round"),
    ("pyramidkv", {}, "round"),
    ("adakv", {}, "round"),
    ("adakv", {"normalize": True}, "round"),
    ("adakv", {"floor_rule": "kvpress"}, "round"),
    ("headkv", {}, "round"),
    ("headkv", {}, "largest-remainder"),
    ("h2o", {}, "round"),
    ("streamingllm", {}, "round"),
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def shape_rows(seeds: int) -> None:
    def cell(values: list[float]) -> str:
        low, high = min(values), max(values)
        return f"{low:.3f}" if low == high else f"{low:.3f}-{high:.3f}"

    print(f"head dim 128, T=700, B=128, w=8, {seeds} seeds: Jaccard (headprof vs reference)")
    print(f"{'method':>12} {'options':>28} " + " ".join(f"{name:>11}" for name in DTYPES))
    for name, options, rounding in SHAPE_ROWS:
        label = ", ".join(f"{key}={value}" for key, value in options.items())
        if name == "headkv":
            label = f"budgets {rounding}"
        cells = []
        for dtype in DTYPES.values():
            values = [harness.random_jaccard(name, dtype, seed, rounding=rounding, **options) for seed in range(seeds)]
            cells.append(f"{cell(values):>11}")
        print(f"{name:>12} {label:>28} " + " ".join(cells))
    for cutoff in ("threshold", "topk"):
        cells = []
        for dtype in DTYPES.values():
            values = []
            for seed in range(seeds):
                values.append(jaccard(*harness.kvzip_random(dtype, seed, "threshold", cutoff=cutoff)))
            cells.append(f"{cell(values):>11}")
        print(f"{'kvzip':>12} {'cutoff=' + cutoff:>28} " + " ".join(cells) + "   (vs the authors' threshold rule)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="64,128")
    parser.add_argument("--windows", default="8,32")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16", help="of the fixture's Q/K (stored in fp16)")
    parser.add_argument("--kvzip", action="store_true")
    parser.add_argument("--shapes", action="store_true", help="only the head-dim-128 table, per dtype")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    if args.shapes:
        shape_rows(args.seeds)
        return
    budgets = [int(b) for b in args.budgets.split(",")]
    fixture_rows(budgets, [int(w) for w in args.windows.split(",")], args.dtypes.split(","))
    if args.kvzip:
        kvzip_rows(budgets)


if __name__ == "__main__":
    main()
