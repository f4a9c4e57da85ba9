"""Cost of a teacher-forced scoring probe vs a plain SDPA forward vs eager `output_attentions`.

    python benchmarks/capture.py [--lengths 1024,2048,4096] [--eager-max 2048] [--repeats 2]

Each (mode, length) runs in a fresh subprocess. Peak memory is that of the measured forwards: on
CPU the peak resident set size (VmHWM, reset through /proc/self/clear_refs after loading) above
the loaded model, on CUDA `torch.cuda.max_memory_allocated`. All three modes compute the logits
of the last position only (`logits_to_keep=1`, as scoring does), so the comparison is of
attention alone, not of a `T x vocabulary` logits matrix. Eager
attention returns every layer's full T x T matrix (L * Hq * T^2 floats); lengths above
`--eager-max` are skipped with that size printed instead, since 4k needs ~18 GB for the matrices.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # "5" resets VmHWM (Linux >= 4.0)
        fh.write("5")


def worker(mode: str, length: int, repeats: int, device: str) -> dict:
    import torch

    from headprof import workspace
    from headprof.capture import AttentionCapture
    from headprof.models import load_model
    from headprof.probes import build_probes, encode_probe, load_needles
    from headprof.scoring import ScoreConfig, score_probe

    loaded = load_model("smollm2-135m", device=device)
    needle = load_needles(workspace.needle_file("reasoning"))[0]
    probe = build_probes([needle], loaded.tokenizer, lengths=(length,), depths=(50,))[0]
    enc = encode_probe(loaded.tokenizer, probe)
    ids = torch.tensor([enc.prompt_ids + enc.target_ids[:-1]], device=loaded.device)
    cuda = loaded.device.type == "cuda"

    def run() -> None:
        with torch.no_grad():
            if mode == "sdpa":
                loaded.model(ids, use_cache=False, logits_to_keep=1)
            elif mode == "eager":
                loaded.model(ids, use_cache=False, output_attentions=True, logits_to_keep=1)
            else:
                with AttentionCapture(loaded.model):
                    score_probe(loaded, enc, ScoreConfig(mode="teacher"))

    if mode == "eager":
        loaded.model.set_attn_implementation("eager")
    with torch.no_grad():
        loaded.model(ids[:, :64], use_cache=False)  # warm-up outside the measurement
    base = _status_mib("VmRSS")
    if not cuda:
        _reset_peak_rss()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _status_mib("VmHWM") - base
    return {"mode": mode, "tokens": ids.shape[1], "seconds": min(times), "peak_mib": round(peak, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--eager-max", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats, args.device)))
        return
    print(f"{'tokens':>7} {'mode':>8} {'seconds':>8} {'x sdpa':>7} {'peak MiB':>9}")
    for length in (int(x) for x in args.lengths.split(",")):
        sdpa_s = None
        for mode in ("sdpa", "headprof", "eager"):
            if mode == "eager" and length > args.eager_max:
                matrices = 30 * 9 * length**2 * 4 / 2**20
                print(
                    f"{length:>7} {mode:>8} {'skipped':>8} {'':>7} {f'>{matrices:.0f}':>9}  (attention matrices alone)"
                )
                continue
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    mode,
                    str(length),
                    "--repeats",
                    str(args.repeats),
                    "--device",
                    args.device,
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                print(f"{length:>7} {mode:>8} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            sdpa_s = row["seconds"] if mode == "sdpa" else sdpa_s
            ratio = f"{row['seconds'] / sdpa_s:.2f}" if sdpa_s else "-"
            print(f"{row['tokens']:>7} {mode:>8} {row['seconds']:>8.2f} {ratio:>7} {row['peak_mib']:>9.1f}")


if __name__ == "__main__":
    main()
