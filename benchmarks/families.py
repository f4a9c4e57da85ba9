"""The model-family table: capture, runtime, memory and bf16 on tiny random-weight models of every supported family.

    python benchmarks/families.py [--families gemma2,gpt-oss]

Models come from the test suite's configs (tests/families.py; no download), 48-token prompts of random ids,
4 new tokens. Columns, one row per family (a markdown table for the README):
- capture: max |captured answer rows - transformers' eager attention probabilities| (fp32);
- full-equal: every method with budgets covering the prompt (HeadKV per query head, the others per KV head):
  greedy tokens equal to the full cache's for all (yes/no), and the max |logit difference|;
- bytes-exact: a SnapKV cache at budget 20 holds exactly the kept entries, the tokens after the prompt once per
  KV head and the sliding-window layers' windows (`kv_bytes` measured from the tensors);
- bf16: KVzip and query-layout SnapKV in bf16 give the full cache's greedy tokens, and their max logit
  difference from it, as a multiple of the floor bf16 itself sets (tests/numerics.py; the tests allow 2);
  "tokens differ at a tie": the first different token is where the full cache's two best logits are within
  twice the floor (random weights give near-uniform logits; such a step has no defined greedy token in bf16).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from headprof.models import info_from_config
from headprof.runtime import METHODS, cache_bytes, compressed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' tiny models and measuring code
from families import (  # noqa: E402
    CAPTURED,
    RUNTIME,
    WHAT,
    capture_vs_eager,
    expected_bytes,
    random_scores,
    tiny_model,
    token_ids,
)
from numerics import greedy, low_precision_errors  # noqa: E402

PROMPT, NEW = 48, 4


def capture_error(model) -> float:
    captured, eager = capture_vs_eager(model, token_ids(40))
    return max(float((captured[i] - probs[:, :, -6:].float()).abs().max()) for i, probs in enumerate(eager))


def full_equal(model, spec) -> tuple[bool, float]:
    ids, full = token_ids(PROMPT), greedy(model, token_ids(PROMPT), NEW)
    same, worst = True, 0.0
    for method in (m for m in METHODS if m != "full"):
        gqa = "query" if method == "headkv" else "kv"
        with compressed(model, method, 20 * PROMPT, gqa=gqa, window=8, scores=random_scores(spec), info=spec):
            run = greedy(model, ids, NEW)
        same &= torch.equal(run.sequences, full.sequences)
        worst = max(worst, max(float((a - b).abs().max()) for a, b in zip(run.logits, full.logits)))
    return same, worst


def bytes_exact(model, spec) -> bool:
    with compressed(model, "snapkv", 20, window=8, info=spec):
        run = greedy(model, token_ids(PROMPT), NEW)
    sizes = cache_bytes(run.cache)
    return sizes["kv_bytes"] == expected_bytes(run.cache, spec, PROMPT, NEW - 1) and sizes["padding_bytes"] == 0


def bf16_ratio(name: str) -> str:
    methods = [("kvzip", "kv"), ("snapkv", "query")]
    floor, results = low_precision_errors(tiny_model(name, dtype=torch.bfloat16), token_ids(PROMPT), methods)
    if not all(r.same_tokens for r in results.values()):
        tie = all(r.same_tokens or r.at_a_tie for r in results.values())
        return "tokens differ" + (" at a tie" if tie else "")
    return f"yes, {max(r.worst for r in results.values()) / max(floor, 1e-3):.2f}x floor"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(CAPTURED))
    args = parser.parse_args()
    print("| family | what it adds | capture vs eager | full-equal (7 methods) | bytes-exact | bf16 greedy, logits |")
    print("|---|---|---:|---|---|---|")
    for name in args.families.split(","):
        model = tiny_model(name)
        spec = info_from_config(model.config, f"tiny/{name}")
        row = [name, WHAT[name], f"{capture_error(model):.1e}"]
        if name in RUNTIME:
            same, worst = full_equal(model, spec)
            row += [f"{'yes' if same else 'NO'}, {worst:.1e}", "yes" if bytes_exact(model, spec) else "NO"]
            row.append(bf16_ratio(name))
        else:
            row += ["refused (MLA latent cache)", "-", "-"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
