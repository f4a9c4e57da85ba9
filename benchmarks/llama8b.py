"""The runtime at Llama-3.1-8B's real shape on one GPU: decode throughput and memory, FullKV vs HeadKV.

    python benchmarks/llama8b.py [--device cuda] [--length 32768] [--budget 1024] [--new-tokens 32]
                                 [--max-batch 64] [--out DIR] [--tiny]

Random weights (seed 0, built on the device; no download): Llama-3.1-8B's config (hidden 4096, 32 layers, 32
query and 8 KV heads of 128, MLP 14336, vocab 128256, llama3 RoPE scaling, bf16). HeadKV's budgets come from a
random head-score table (the bytes and the speed do not depend on which heads are rich). Three tables:

- decode: for FullKV and HeadKV B=`--budget`, at batch 1 and then doubling the batch (1, 2, 4, ...) until the
  device runs out of memory or `--max-batch`: prefill seconds, decode tokens/s per sequence and in aggregate,
  KV MiB, peak GiB (`max_memory_allocated`, weights included). Row i of a batch is a different random prompt
  of `--length - i` tokens, left-padded: HeadKV prefills and compresses each row alone, the full cache the
  padded batch at once; the largest batch that ran is each method's capacity on this device.
- targets (issue 20): HeadKV's tokens/s at batch 1 against FullKV's (>= 1x), and its best aggregate
  throughput against FullKV's best (>= 4x).
- capture: the scoring capture (`AttentionCapture`, 8 answer rows) on one `--length` prompt against a plain
  SDPA forward: peak GiB of each and seconds.

`--tiny` shrinks the shape (2 layers, hidden 256, 8/2 heads of 32, vocab 1024) and the prompt (512 tokens,
B=64) so that the whole script runs on a CPU in seconds: the test of the script itself. Tables print as they
end and go to `DIR/llama8b.md` / `DIR/llama8b.json` when `--out` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tests/families.py: random_scores

from headprof.capture import AttentionCapture  # noqa: E402
from headprof.models import info_from_config  # noqa: E402
from headprof.runtime import cache_bytes, compressed  # noqa: E402

from families import random_scores  # noqa: E402

LLAMA31_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    max_position_embeddings=131072,
    rope_parameters={
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
)
TINY = dict(
    LLAMA31_8B,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=32,
    vocab_size=1024,
    bos_token_id=1,
    eos_token_id=2,
)
GIB = 2**30


@dataclass
class Row:
    """One method at one batch size."""

    method: str
    batch: int
    prefill_s: float = 0.0
    tokens_per_s: float = 0.0  # per sequence
    aggregate_tokens_per_s: float = 0.0
    kv_mib: float = 0.0
    peak_gib: float = 0.0
    error: str = ""

    def cells(self) -> list[str]:
        if self.error:
            return [self.method, str(self.batch), self.error, "-", "-", "-", "-"]
        return [
            self.method,
            str(self.batch),
            f"{self.prefill_s:.2f}",
            f"{self.tokens_per_s:.1f}",
            f"{self.aggregate_tokens_per_s:.1f}",
            f"{self.kv_mib:.1f}",
            f"{self.peak_gib:.2f}",
        ]


class Clock:
    """Timestamps of every generate step (a logits processor is called once per new token, after its forward):
    the first is the end of the prefill, the rest time the decode."""

    def __init__(self, device: str):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def build_model(shape: dict[str, Any], device: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=dtype).eval()
    model.generation_config.eos_token_id = None  # random weights: every run decodes its full length
    return model


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / GIB if device.startswith("cuda") else 0.0


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def decode_row(model: Any, method: str, batch: int, args: argparse.Namespace) -> Row:
    """`--new-tokens` greedy tokens for `batch` different random prompts under `method`."""
    from transformers import LogitsProcessorList

    info = info_from_config(model.config, "random/llama-3.1-8b-shape")
    generator = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, model.config.vocab_size, (batch, args.length), generator=generator)
    # row i is a different prompt i tokens shorter, left-padded: under a compressing press each row is then
    # prefilled and compressed on its own (runtime.press, padded batches), so the batch is bounded by the kept
    # bytes, not by a batched prefill's activations; the full cache prefills the padded batch at once.
    mask = (torch.arange(args.length)[None, :] >= torch.arange(batch)[:, None]).long()
    ids, mask = (ids * mask).to(args.device), mask.to(args.device)
    press = compressed(model, method, args.budget, scores=random_scores(info), info=info)
    clock = Clock(args.device)
    reset_peak(args.device)
    started = time.perf_counter()
    with press, torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=args.new_tokens,
            do_sample=False,
            pad_token_id=0,
            logits_processor=LogitsProcessorList([clock]),
            return_dict_in_generate=True,
        )
    decode_s = clock.stamps[-1] - clock.stamps[0]
    per_sequence = (len(clock.stamps) - 1) / decode_s if decode_s > 0 else 0.0
    return Row(
        method,
        batch,
        prefill_s=clock.stamps[0] - started,
        tokens_per_s=per_sequence,
        aggregate_tokens_per_s=per_sequence * batch,
        kv_mib=cache_bytes(out.cache)["kv_bytes"] / 2**20,
        peak_gib=peak_gib(args.device),
    )


def out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def decode_table(model: Any, args: argparse.Namespace, lines: list[str]) -> list[Row]:
    lines += ["| method | batch | prefill s | tok/s per sequence | aggregate tok/s | KV MiB | peak GiB |"]
    lines += ["|---|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    rows: list[Row] = []
    for method in ("full", "headkv"):
        batch = 1
        while batch <= args.max_batch:
            try:
                row = decode_row(model, method, batch, args)
            except Exception as exc:  # noqa: BLE001 - an out-of-memory batch ends the doubling; it is a row
                if not out_of_memory(exc):
                    raise
                row = Row(method, batch, error="out of memory")
            rows.append(row)
            lines.append("| " + " | ".join(row.cells()) + " |")
            print(lines[-1], flush=True)
            if row.error:
                break
            batch *= 2
    return rows


def targets(rows: list[Row], lines: list[str]) -> dict[str, float]:
    """Issue 20's two GPU targets, read off the decode table."""

    def ran(method: str) -> list[Row]:
        return [row for row in rows if row.method == method and not row.error]

    single = {m: next(row.tokens_per_s for row in ran(m) if row.batch == 1) for m in ("full", "headkv")}
    best = {m: max(ran(m), key=lambda row: row.aggregate_tokens_per_s) for m in ("full", "headkv")}
    found = {
        "batch1_ratio": single["headkv"] / single["full"],
        "best_ratio": best["headkv"].aggregate_tokens_per_s / best["full"].aggregate_tokens_per_s,
        "full_best_batch": best["full"].batch,
        "headkv_best_batch": best["headkv"].batch,
    }
    lines += [
        "",
        f"HeadKV / FullKV tokens/s at batch 1: {found['batch1_ratio']:.2f}x (target >= 1)",
        f"HeadKV best aggregate (batch {best['headkv'].batch}) / FullKV best (batch {best['full'].batch}): "
        f"{found['best_ratio']:.2f}x (target >= 4)",
    ]
    print("\n".join(lines[-3:]), flush=True)
    return found


def capture_table(model: Any, args: argparse.Namespace, lines: list[str]) -> dict[str, float]:
    """Peak memory of one capturing forward (8 answer rows per layer, handed to a callback and dropped, as
    scoring does) against the plain SDPA forward of the same prompt."""
    ids = torch.randint(3, model.config.vocab_size, (1, args.length), generator=torch.Generator().manual_seed(7))
    ids = ids.to(args.device)
    found: dict[str, float] = {}
    for label in ("sdpa", "capture"):
        reset_peak(args.device)
        started = time.perf_counter()
        with torch.no_grad():
            if label == "sdpa":
                model(ids, logits_to_keep=1)
            else:
                with AttentionCapture(model), AttentionCapture.rows(8, lambda layer, rows: None):
                    model(ids, logits_to_keep=1)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        found[f"{label}_s"] = time.perf_counter() - started
        found[f"{label}_peak_gib"] = peak_gib(args.device)
    lines += [
        "",
        "| forward | seconds | peak GiB |",
        "|---|---:|---:|",
        f"| SDPA | {found['sdpa_s']:.2f} | {found['sdpa_peak_gib']:.2f} |",
        f"| capture (8 rows) | {found['capture_s']:.2f} | {found['capture_peak_gib']:.2f} |",
    ]
    print("\n".join(lines[-5:]), flush=True)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--length", type=int, default=None, help="prompt tokens (default 32768; --tiny: 512)")
    parser.add_argument("--budget", type=int, default=None, help="HeadKV's B (default 1024; --tiny: 64)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true", help="a small shape for a CPU check of the script")
    args = parser.parse_args(argv)
    args.length = args.length or (512 if args.tiny else 32768)
    args.budget = args.budget or (64 if args.tiny else 1024)
    shape = TINY if args.tiny else LLAMA31_8B
    dtype = torch.bfloat16
    started = time.perf_counter()
    model = build_model(shape, args.device, dtype)
    lines = [f"# Llama-3.1-8B shape{' (tiny)' if args.tiny else ''}: {args.length} tokens, bf16, {args.device}", ""]
    rows = decode_table(model, args, lines)
    found = {"targets": targets(rows, lines), "capture": capture_table(model, args, lines)}
    lines += ["", f"total: {time.perf_counter() - started:.0f} s"]
    print(lines[-1])
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "llama8b.md").write_text("\n".join(lines) + "\n")
        record = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": [asdict(r) for r in rows], **found}
        (args.out / "llama8b.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
