"""The model-family table: capture, runtime, memory and bf16 on tiny random-weight models of every supported family.

    python benchmarks/families.py [--families gemma2,gpt-oss] [--device cpu]

Models come from the test suite's configs (tests/families.py; no download) with the embedded model's vocabulary
(KVzip's reconstruction prompts are text, read by its tokenizer), 48-token prompts of random ids, 4 new tokens.
Columns, one row per family (a markdown table for the README):
- capture: max |captured answer rows - transformers' eager attention probabilities| (fp32);
- full-equal: every method with budgets covering the prompt (HeadKV per query head, the others per KV head):
  greedy tokens equal to the full cache's for all (yes/no), and the max |logit difference|;
- bytes-exact: a SnapKV cache at budget 20 holds exactly the kept entries, the tokens after the prompt once per
  KV head and the sliding-window layers' windows (`kv_bytes` measured from the tensors);
- bf16: KVzip and query-layout SnapKV in bf16 give the full cache's greedy tokens, and their max logit
  difference from it, as a multiple of the floor bf16 itself sets (tests/numerics.py; the tests allow 2);
  "tokens differ at a tie": the first different token is where the full cache's two best logits are within
  twice the floor (random weights give near-uniform logits; such a step has no defined greedy token in bf16).
`check_family` returns one row's numbers and whether they pass the tests' bounds (benchmarks/gpu.py uses it).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from headprof.models import info_from_config, load_tokenizer
from headprof.runtime import METHODS, cache_bytes, compressed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' tiny models and measuring code
from families import (  # noqa: E402
    CAPTURED,
    REFUSED,
    RUNTIME,
    WHAT,
    capture_vs_eager,
    expected_bytes,
    random_scores,
    tiny_model,
    token_ids,
)
from numerics import Comparison, greedy, low_precision_errors  # noqa: E402

PROMPT, NEW = 48, 4
CAPTURE_TOLERANCE, LOGIT_TOLERANCE, FLOOR_MULTIPLE = 1e-5, 1e-4, 2.0  # tests/test_families.py, test_precision.py
HEADER = "| family | what it adds | capture vs eager | full-equal (7 methods) | bytes-exact | bf16 greedy, logits |"


@dataclass
class FamilyResult:
    """One family's row: capture error; for a runtime family, full-cache equality, exact bytes and the bf16 check."""

    name: str
    capture: float
    runtime: bool = True
    same_tokens: bool = True
    worst_logit: float = 0.0
    bytes_exact: bool = True
    floor: float = 0.0
    bf16: dict[str, Comparison] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        """What breaks the tests' bounds (a bf16 token difference at a tie does not)."""
        bad = []
        if self.capture > CAPTURE_TOLERANCE:
            bad.append(f"capture error {self.capture:.1e} > {CAPTURE_TOLERANCE:.0e}")
        if not self.runtime:
            return bad
        if not self.same_tokens:
            bad.append("greedy tokens differ from the full cache's")
        if self.worst_logit > LOGIT_TOLERANCE:
            bad.append(f"logits {self.worst_logit:.1e} from the full cache's > {LOGIT_TOLERANCE:.0e}")
        if not self.bytes_exact:
            bad.append("kv_bytes differ from the expected bytes")
        bound = FLOOR_MULTIPLE * max(self.floor, 1e-3)
        for method, result in self.bf16.items():
            if not (result.same_tokens or result.at_a_tie):
                bad.append(f"bf16 {method}: tokens differ, not at a tie")
            elif result.same_tokens and result.worst > bound:
                bad.append(f"bf16 {method}: logits {result.worst:.1e} > {FLOOR_MULTIPLE:g}x floor {bound:.1e}")
        return bad

    def cells(self) -> list[str]:
        """The README table's cells."""
        row = [self.name, WHAT[self.name], f"{self.capture:.1e}"]
        if not self.runtime:
            return row + ["refused (MLA latent cache)", "-", "-"]
        row += [f"{'yes' if self.same_tokens else 'NO'}, {self.worst_logit:.1e}", "yes" if self.bytes_exact else "NO"]
        if all(r.same_tokens for r in self.bf16.values()):
            ratio = max(r.worst for r in self.bf16.values()) / max(self.floor, 1e-3)
            return row + [f"yes, {ratio:.2f}x floor"]
        tie = all(r.same_tokens or r.at_a_tie for r in self.bf16.values())
        return row + ["tokens differ" + (" at a tie" if tie else "")]


def capture_error(model: Any) -> float:
    captured, eager = capture_vs_eager(model, token_ids(40).to(model.device))
    return max(float((captured[i] - probs[:, :, -6:].float()).abs().max()) for i, probs in enumerate(eager))


def full_equal(model: Any, spec: Any, tokenizer: Any) -> tuple[bool, float]:
    ids = token_ids(PROMPT).to(model.device)
    full = greedy(model, ids, NEW)
    same, worst = True, 0.0
    for method in (m for m in METHODS if m != "full"):
        gqa = "query" if method == "headkv" else "kv"
        scores = random_scores(spec)
        with compressed(model, method, 20 * PROMPT, gqa=gqa, window=8, scores=scores, info=spec, tokenizer=tokenizer):
            run = greedy(model, ids, NEW)
        same &= torch.equal(run.sequences, full.sequences)
        worst = max(worst, max(float((a - b).abs().max()) for a, b in zip(run.logits, full.logits)))
    return same, worst


def bytes_exact(model: Any, spec: Any) -> bool:
    with compressed(model, "snapkv", 20, window=8, info=spec):
        run = greedy(model, token_ids(PROMPT).to(model.device), NEW)
    sizes = cache_bytes(run.cache)
    return sizes["kv_bytes"] == expected_bytes(run.cache, spec, PROMPT, NEW - 1) and sizes["padding_bytes"] == 0


def bf16_errors(name: str, tokenizer: Any, device: str) -> tuple[float, dict[str, Comparison]]:
    model = tiny_model(name, vocab=len(tokenizer), dtype=torch.bfloat16).to(device)
    methods = [("kvzip", "kv"), ("snapkv", "query")]
    return low_precision_errors(model, token_ids(PROMPT).to(device), methods, tokenizer=tokenizer)


def check_family(name: str, tokenizer: Any, device: str = "cpu") -> FamilyResult:
    """Every column of the family `name` on `device` (fp32 model, then a bf16 one for the last column)."""
    model = tiny_model(name, vocab=len(tokenizer)).to(device)
    result = FamilyResult(name, capture_error(model), runtime=name in RUNTIME)
    if result.runtime:
        spec = info_from_config(model.config, f"tiny/{name}")
        result.same_tokens, result.worst_logit = full_equal(model, spec, tokenizer)
        result.bytes_exact = bytes_exact(model, spec)
        result.floor, result.bf16 = bf16_errors(name, tokenizer, device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(CAPTURED))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    tokenizer, _ = load_tokenizer()
    refused = ", ".join(REFUSED)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {args.device}; refused: {refused}\n")
    print(HEADER)
    print("|---|---|---:|---|---|---|")
    for name in args.families.split(","):
        print("| " + " | ".join(check_family(name, tokenizer, args.device).cells()) + " |", flush=True)


if __name__ == "__main__":
    main()
