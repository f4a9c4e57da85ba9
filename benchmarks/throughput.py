"""Decode throughput of different prompts decoded together, within one KV memory budget (issue 20, 4(b)).

    python benchmarks/throughput.py [--kv-mib 1024] [--tokens 2048] [--new 32] [--configs full,headkv:128,headkv:512]
                                    [--max-batch 64] [--device cpu|cuda]

The embedded model (SmolLM2-135M). Prompts: different ~`--tokens`-token passages of the packaged haystack (each a
few tokens shorter than the one before, so that the batch is really left-padded), each followed by a question.
For each configuration (the full cache; HeadKV at budget B from the packaged reference scores), the batch is the
largest whose KV cache fits `--kv-mib` once every row holds its prompt and `--new` generated tokens: the full
cache counts `[batch, padded length + new]` K/V (transformers' left-padded DynamicCache), a compressed one each
row's kept entries plus its generated tokens (`CompressedCache.kv_bytes_after`, measured on one prefilled prompt).
Then `model.generate` decodes the batch inside `with press:` (left-padded; each prompt prefilled and compressed
alone), `--new` tokens per row (`min_new_tokens`, so no row stops early), and reports:

- aggregate decode tokens/s: the batch's tokens after each row's first, over the decode seconds (prefills excluded);
- KV bytes of the batch's cache at the end (exact, from the cache);
- peak memory: on CPU each configuration runs in its own process and reports its peak RSS (VmHWM) above its
  RSS once the model is loaded (prompts, prefill activations and caches); on CUDA `torch.cuda.max_memory_allocated`.

It prints the target: HeadKV B=128's aggregate tokens/s >= 5x the full cache's, each at the batch the budget
allows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PROMPT_QUESTION = "\n\nQuestion: what is the main subject of the passage above? Answer in one sentence."


def prompts(loaded, count: int, tokens: int) -> list[list[int]]:
    """`count` different prompts of about `tokens` tokens (prompt i is 3i tokens shorter): haystack passages
    starting at different paragraphs, through the chat template."""
    from headprof.probes import encode_text, load_haystack, render_prompt

    paragraphs = load_haystack()
    out = []
    for i in range(count):
        start, text = (7 * i) % len(paragraphs), ""
        ids: list[int] = []
        while len(ids) < tokens:
            text += paragraphs[start % len(paragraphs)] + "\n\n"
            start += 1
            ids = loaded.tokenizer(text, add_special_tokens=False).input_ids
        context = loaded.tokenizer.decode(ids[: tokens - 3 * i - 40])
        prompt, templated = render_prompt(loaded.tokenizer, context, PROMPT_QUESTION.strip())
        out.append(encode_text(loaded.tokenizer, prompt, templated)["input_ids"])
    return out


def press_for(loaded, config: str):
    from headprof.artifacts import load_scores
    from headprof.runtime import compressed
    from headprof.workspace import reference_file

    if config == "full":
        return compressed(loaded.model, "full")
    method, budget = config.split(":")
    scores = load_scores(reference_file("smollm2-135m", "scores.safetensors"))
    return compressed(loaded.model, method, int(budget), scores=scores)


def row_bytes(loaded, press, prompt: list[int], width: int, new: int) -> int:
    """KV bytes one row holds once it has decoded `new` tokens (a full-cache row: the padded width)."""
    import torch

    from headprof.allocation import full_kv_bytes

    if not press.method.compresses:
        element = next(loaded.model.parameters()).element_size()
        return full_kv_bytes(loaded.info, element, width + new)
    cache = press.prefill(torch.tensor([prompt], device=loaded.device))
    return cache.kv_bytes_after(new)


def run_one(args: argparse.Namespace) -> dict:
    """One configuration at the largest batch the KV budget allows: its throughput and memory."""
    import torch

    from headprof.models import load_model
    from headprof.runtime.press import cache_bytes

    loaded = load_model("smollm2-135m", device=args.device)
    loaded_rss = _status("VmRSS")
    press = press_for(loaded, args.one)
    probe = prompts(loaded, 1, args.tokens)[0]
    per_row = row_bytes(loaded, press, probe, len(probe), args.new)
    batch = min(args.max_batch, int(args.kv_mib * 2**20 // per_row))
    if batch < 1:
        return {"config": args.one, "batch": 0, "per_row_bytes": per_row}
    rows = prompts(loaded, batch, args.tokens)
    width = max(map(len, rows))
    pad = loaded.tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=loaded.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=loaded.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with press, torch.no_grad():
        started = time.perf_counter()
        out = loaded.model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=args.new,
            min_new_tokens=args.new,
            do_sample=False,
            pad_token_id=pad,
            return_dict_in_generate=True,
        )
        elapsed = time.perf_counter() - started
    prefill = press.stats.prefill_seconds
    if not press.method.compresses:  # transformers' own batched prefill: timed alone on a copy of the batch
        with torch.no_grad():
            started = time.perf_counter()
            loaded.model(ids, attention_mask=mask, logits_to_keep=1)
            prefill = time.perf_counter() - started
    decode_s = elapsed - prefill
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else _status("VmHWM") - loaded_rss
    return {
        "config": args.one,
        "batch": batch,
        "per_row_bytes": per_row,
        "kv_bytes": cache_bytes(out.cache)["kv_bytes"],
        "decode_s": round(decode_s, 3),
        "prefill_s": round(prefill, 3),
        "tokens_per_s": round(batch * (args.new - 1) / decode_s, 2),
        "peak_bytes": peak,
        "peak_kind": "cuda max_memory_allocated" if args.device.startswith("cuda") else "peak RSS over loaded model",
    }


def _status(field: str) -> int:
    """A byte count of this process from /proc/self/status (VmRSS now, VmHWM its peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kv-mib", type=float, default=1024)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--configs", default="full,headkv:128,headkv:512")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return
    results = []
    for config in args.configs.split(","):
        forwarded = [a for a in sys.argv[1:] if not a.startswith("--configs") and a != args.configs]
        child = subprocess.run(
            [sys.executable, __file__, *forwarded, "--one", config], capture_output=True, text=True, check=True
        )
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print(f"\nKV budget {args.kv_mib:g} MiB, prompts ~{args.tokens} tokens, {args.new} new tokens per row")
    print(f"{'config':<12} {'batch':>5} {'row KV MiB':>10} {'batch KV MiB':>12} {'tok/s':>8} {'peak+ MiB':>9}")
    for r in results:
        if r["batch"]:
            print(
                f"{r['config']:<12} {r['batch']:>5} {r['per_row_bytes'] / 2**20:>10.2f} {r['kv_bytes'] / 2**20:>12.1f} "
                f"{r['tokens_per_s']:>8.2f} {r['peak_bytes'] / 2**20:>9.0f}"
            )
        else:
            print(f"{r['config']:<12} does not fit: one row needs {r['per_row_bytes'] / 2**20:.1f} MiB")
    by = {r["config"]: r for r in results if r["batch"]}
    if "full" in by and "headkv:128" in by:
        ratio = by["headkv:128"]["tokens_per_s"] / by["full"]["tokens_per_s"]
        verdict = "met" if ratio >= 5 else "NOT met"
        print(
            f"target (b): HeadKV B=128 aggregate tok/s >= 5x the full cache's within the same KV memory: "
            f"{ratio:.2f}x ({verdict})"
        )


if __name__ == "__main__":
    main()
