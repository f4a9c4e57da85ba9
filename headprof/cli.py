"""The `headprof` command: a thin typer layer over the library. Errors are one line, never a traceback."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from headprof import workspace
from headprof.errors import HeadprofError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Profile attention heads for long-context retrieval and reasoning; compress the KV cache.")
probes_app = typer.Typer(no_args_is_help=True, help="Build and inspect needle-in-a-haystack probe sets.")
app.add_typer(probes_app, name="probes")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Alias, hub id, local directory or .gguf file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]
DtypeOpt = Annotated[str, typer.Option(help="float32 | bfloat16 | float16 | auto (bf16 on CUDA, fp32 on CPU).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu | cuda | cuda:N | auto.")]
DeviceMapOpt = Annotated[str | None, typer.Option("--device-map", help="'auto' shards a large model (accelerate).")]
KernelOpt = Annotated[int, typer.Option(help="Pooling kernel over positions for SnapKV-family scores (odd).")]
PoolingOpt = Annotated[str, typer.Option(help="Pooling of SnapKV-family scores: max | avg.")]


def _numbers(text: str, what: str, kind: type = int) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise HeadprofError(f"{what} must be comma-separated {kind.__name__}s, got '{text}'") from None


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err, transient=True)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load(model: str, dtype: str = "auto", device: str = "auto", device_map: str | None = None):
    from headprof.models import load_model

    _quiet_transformers()
    with err.status(f"loading {model} ..."):
        return load_model(model, dtype=dtype, device=device, device_map=device_map)


# ---------------------------------------------------------------- probes


@probes_app.command("build")
def probes_build(
    model: ModelOpt = "smollm2-135m",
    kind: Annotated[str, typer.Option(help="retrieval | reasoning | both")] = "both",
    lengths: Annotated[str, typer.Option(help="Prompt lengths in tokens of the model's tokenizer.")] = "1024,2048",
    depths: Annotated[str, typer.Option(help="Needle depths in percent of the haystack.")] = "10,50,90",
    needles: Annotated[list[Path] | None, typer.Option(help="Needle JSONL file(s); default: probes/needles-*.jsonl.")] = None,
    haystack: Annotated[str, typer.Option(help="'builtin' (Python's own docs) or a text file / folder.")] = "builtin",
    seed: int = 0,
    out_file: Annotated[Path | None, typer.Option("--out", help="Default: probes/probes-<model>.jsonl.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a probe set: every needle x length x depth, written as JSONL."""
    from headprof import probes as P
    from headprof.models import load_tokenizer

    kinds = P.KINDS if kind == "both" else (kind,)
    if any(k not in P.KINDS for k in kinds):
        raise HeadprofError(f"unknown kind '{kind}' (retrieval, reasoning, both)")
    files = needles or [workspace.needle_file(k) for k in kinds]
    needle_list = [n for f in files for n in P.load_needles(f) if n.kind in kinds]
    if not needle_list:
        raise HeadprofError(f"no {kind} needles in {', '.join(map(str, files))}")
    _quiet_transformers()
    with err.status(f"loading the tokenizer of {model} ..."):
        tokenizer, info = load_tokenizer(model)
    started = time.time()
    probe_list = P.build_probes(needle_list, tokenizer, _numbers(lengths, "--lengths"), _numbers(depths, "--depths", float),
                                seed, haystack, info.max_context, tokenizer_name=model)
    target = out_file or workspace.probe_file(model)
    P.write_probes(target, probe_list)
    counts = {k: sum(p.kind == k for p in probe_list) for k in kinds}
    if as_json:
        _emit({"probes": str(target), "count": len(probe_list), "per_kind": counts,
               "sha256": P.probes_sha256(probe_list), "seconds": round(time.time() - started, 2)})
    else:
        sizes = sorted({p.n_tokens for p in probe_list})
        out.print(f"wrote {len(probe_list)} probes ({', '.join(f'{v} {k}' for k, v in counts.items())}) "
                  f"to {target}; prompt lengths {sizes[0]}-{sizes[-1]} tokens")


# ---------------------------------------------------------------- score


@app.command()
def score(
    model: ModelOpt = "smollm2-135m",
    probes: Annotated[Path | None, typer.Option(help="Probe JSONL; default: probes/probes-<model>.jsonl.")] = None,
    method: Annotated[str, typer.Option(help="retrieval | r2 | both")] = "both",
    mode: Annotated[str, typer.Option(help="teacher (gold answer forced, all count) | generate (own answer)")] = "teacher",
    max_new_tokens: Annotated[int, typer.Option(help="generate mode: answer length cap.")] = 48,
    criterion: Annotated[str, typer.Option(help="generate mode: recall (gold tokens in answer) | f1.")] = "recall",
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    device_map: DeviceMapOpt = None,
    shard: Annotated[str | None, typer.Option(help="i/N: score only every N-th probe from i (merge later).")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Default: artifacts/<model>/scores.safetensors.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the model on the probes with attention capture and write per-head scores."""
    from headprof import distributed, probes as P, scoring
    from headprof.artifacts import save_scores

    methods = ("retrieval", "r2") if method == "both" else (method,)
    config = scoring.ScoreConfig(methods=methods, mode=mode, max_new_tokens=max_new_tokens, criterion=criterion)
    config.validate()
    probe_list = P.load_probes(probes or workspace.probe_file(model))
    select, shard_meta = distributed.shard_indices(len(probe_list), shard)
    target = out_file or workspace.scores_file(model, mode, shard_meta.get("shard"))
    _check_writable(target)
    world = distributed.World.from_env()
    wanted, select = select, world.split(select)
    loaded = _load(model, dtype, world.device(device), device_map)
    _warn_foreign_probes(probe_list, loaded.spec.name)
    started = time.time()
    with progress_bar() as bar:
        task = bar.add_task(f"scoring {loaded.spec.name}", total=len(select))
        art = scoring.score_probes(loaded, probe_list, config, select=select,
                                   checkpoint=f"{target}.partial-{world.rank}" if world.size > 1 else f"{target}.partial",
                                   on_probe=lambda _r: bar.advance(task), extra_meta=shard_meta)
    art = world.gather(art, wanted)
    seconds = time.time() - started
    world.close()
    if not world.is_main:
        return
    save_scores(target, art)
    for partial in target.parent.glob(f"{target.name}.partial*"):
        partial.unlink(missing_ok=True)
    _report_scores(art, target, seconds, as_json)


def _warn_foreign_probes(probe_list, model: str) -> None:
    """Probe lengths and chat templates belong to the tokenizer that built them."""
    from headprof.models import resolve_model

    def model_id(name: str) -> str:
        try:
            return resolve_model(name).model_id
        except HeadprofError:
            return name

    mine = model_id(model)
    others = sorted({p.tokenizer for p in probe_list if p.tokenizer and model_id(p.tokenizer) != mine})
    if others:
        err.print(f"[yellow]notice:[/yellow] probes were built with the tokenizer of {', '.join(others)}, "
                  f"not {model}: their lengths and chat template are those of that model", soft_wrap=True)


def _check_writable(target: Path) -> None:
    """Fail before a long run, not after it; create nothing (the atomic write makes the directory)."""
    existing = target.parent.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise HeadprofError(f"output directory {target.parent} is not writable ({existing})")


def _top_heads(scores, k: int) -> list[list[float]]:
    from headprof.heads import ranked_heads

    flat, order = scores.flatten(), ranked_heads(scores)[:k]
    n_heads = scores.shape[1]
    return [[i // n_heads, i % n_heads, round(float(flat[i]), 6)] for i in order]


def _report_scores(art, target: Path, seconds: float, as_json: bool) -> None:
    counts = art.counts()
    main_method = "r2" if "r2" in art.per_probe else art.methods[0]
    top = _top_heads(art.scores(main_method), 10)
    if as_json:
        _emit({"artifact": str(target), "probes_total": sum(c["total"] for c in counts.values()),
               "probes_counted": sum(c["counted"] for c in counts.values()), "per_kind": counts,
               "mode": art.meta.get("mode"), "seconds": round(seconds, 2), "method": main_method, "top_heads": top})
        return
    table = Table(title=f"probes ({art.meta.get('mode')} mode)")
    for col in ("kind", "total", "counted"):
        table.add_column(col)
    for kind, c in counts.items():
        table.add_row(kind, str(c["total"]), str(c["counted"]))
    out.print(table)
    out.print(f"top {main_method} heads (layer, head, score): " + ", ".join(f"L{l}H{h} {s:.3f}" for l, h, s in top))
    out.print(f"wrote {target} in {seconds:.1f} s")


# ---------------------------------------------------------------- allocate


@app.command()
def allocate(
    budget: Annotated[int, typer.Option(help="Mean KV entries per head, window included.")],
    scores: Annotated[Path | None, typer.Option(help="Score artifact; default: the default model's.")] = None,
    policy: Annotated[str, typer.Option(help="headkv | uniform | pyramid")] = "headkv",
    beta: Annotated[float | None, typer.Option(help="headkv: pool share M = N / beta (default 1.2); pyramid: slope (default 20).")] = None,
    temp: Annotated[float, typer.Option(help="headkv: score temperature.")] = 1.0,
    window: Annotated[int, typer.Option(help="Observation window kept in every head.")] = 32,
    gqa: Annotated[str, typer.Option(help="kv: per KV head (memory-honest) | query: per query head (HeadKV paper).")] = "kv",
    score_method: Annotated[str, typer.Option("--score-method", help="Which score drives headkv: r2 | retrieval.")] = "r2",
    context: Annotated[int | None, typer.Option(help="Context length for the KV bytes summary; default: model window.")] = None,
    bytes_per_value: Annotated[int, typer.Option(help="Bytes per cached value for the summary (2 = bf16).")] = 2,
    out_file: Annotated[Path | None, typer.Option("--out", help="Default: next to the scores, alloc-b<B>-<policy>.safetensors.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn head scores into per-head KV budgets (HeadKV S·M·N pool, uniform/SnapKV, PyramidKV)."""
    from headprof import allocation as A
    from headprof.artifacts import AllocArtifact, load_scores, save_alloc

    if bytes_per_value < 1 or (context is not None and context < 1):
        raise HeadprofError("--bytes-per-value and --context must be positive")
    source = scores or workspace.scores_file("smollm2-135m")
    art = load_scores(source)
    config = A.AllocConfig(budget, policy, window, beta, temp, gqa)
    config.validate(art.model.max_context)
    budgets = A.allocate(art.scores(score_method), config, art.model.n_kv_heads)
    target = out_file or workspace.alloc_file(source, budget, policy, gqa)
    meta = {"policy": policy, "budget": budget, "window": window, "beta": config.beta_value, "temp": temp,
            "gqa": gqa, "score_method": score_method, "source_scores": str(source),
            "source_scores_sha256": art.meta["sha256"], "rounding": "largest remainder, ties to lower head index",
            "floor": A.floor_of(config, art.model.n_layers)}
    save_alloc(target, AllocArtifact(art.model, budgets, meta))
    _report_alloc(target, budgets, config, art.model, context or art.model.max_context, bytes_per_value, as_json)


def _report_alloc(target: Path, budgets, config, model, context: int, bytes_per_value: int, as_json: bool) -> None:
    from headprof import allocation as A

    stored = budgets.clamp(max=context)
    used = A.kv_bytes(budgets, model.head_dim, bytes_per_value, context)
    other_heads = model.n_heads if config.gqa == "kv" else model.n_kv_heads
    other = 2 * model.head_dim * bytes_per_value * model.n_layers * other_heads * min(config.budget, context)
    full = A.full_kv_bytes(model.n_layers, model.n_kv_heads, model.head_dim, bytes_per_value, context)
    floor = A.floor_of(config, model.n_layers)
    at_floor = float((budgets <= floor).float().mean())
    if as_json:
        _emit({"artifact": str(target), "policy": config.policy, "gqa": config.gqa, "total": int(budgets.sum()),
               "min": int(budgets.min()), "max": int(budgets.max()), "at_floor": round(at_floor, 4),
               "kv_bytes": used, "kv_bytes_other_layout": other, "kv_bytes_full": full, "context": context})
        return
    table = Table(title=f"{config.policy} budgets (B={config.budget}, w={config.window}, gqa={config.gqa})")
    for col in ("layer", "min", "median", "max"):
        table.add_column(col, justify="right")
    for layer in range(budgets.shape[0]):
        row = budgets[layer]
        table.add_row(str(layer), str(int(row.min())), str(int(row.median())), str(int(row.max())))
    out.print(table)
    layout_other = "query-head" if config.gqa == "kv" else "KV-head"
    out.print(f"total {int(budgets.sum())} entries ({budgets.numel()} heads x {config.budget}); "
              f"{at_floor:.0%} of heads at the floor ({floor})")
    out.print(f"KV bytes at {context} tokens ({bytes_per_value} B/value): {_mib(used)} this layout, "
              f"{_mib(other)} with {layout_other} budgets of {config.budget}, {_mib(full)} full cache "
              f"({used / full:.1%} of full; stored entries {int(stored.sum())})")
    out.print(f"wrote {target}")


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


# ---------------------------------------------------------------- show


@app.command()
def show(
    artifact: Annotated[Path, typer.Argument(help="A score or allocation artifact.")],
    method: Annotated[str | None, typer.Option(help="Score to show: r2 | retrieval (default: r2 if present).")] = None,
    top: Annotated[int, typer.Option(help="Rows in the top-heads table.")] = 10,
    gqa: Annotated[str, typer.Option(help="query | kv (sum over each KV group).")] = "query",
    png: Annotated[Path | None, typer.Option(help="Also write a matplotlib heatmap (layers x heads).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Top heads, per-layer summary and a heatmap of a score (or budget) artifact."""
    from headprof.artifacts import ALLOC_FORMAT, load_alloc, load_scores
    from headprof.heads import kv_view

    if top < 1:
        raise HeadprofError(f"--top must be at least 1, got {top}")
    if gqa not in ("kv", "query"):
        raise HeadprofError(f"--gqa must be kv or query, got '{gqa}'")
    header = _peek_format(artifact)
    if header == ALLOC_FORMAT:
        alloc = load_alloc(artifact)
        values, label, model, extra = alloc.budgets.float(), f"budgets ({alloc.meta.get('policy')})", alloc.model, {}
    else:
        art = load_scores(artifact)
        method = method or ("r2" if "r2" in art.per_probe else art.methods[0])
        values, label, model = art.scores(method), f"{method} score", art.model
        extra = {"counts": art.counts(), "mode": art.meta.get("mode")}
        if gqa == "kv":
            values, label = kv_view(values, model.n_kv_heads), f"{label}, summed per KV head"
    if png:
        from headprof.plots import score_heatmap

        score_heatmap(values, png, f"{model.model_id}: {label}")
    layers = [{"layer": i, "mean": round(float(r.mean()), 6), "max": round(float(r.max()), 6),
               "argmax_head": int(r.argmax())} for i, r in enumerate(values)]
    if as_json:
        _emit({"artifact": str(artifact), "model": model.model_id, "what": label, **extra,
               "top_heads": _top_heads(values, top), "layers": layers, "png": str(png) if png else None})
        return
    out.print(f"[bold]{artifact}[/bold]: {label} of {model.model_id} "
              f"({model.n_layers} layers x {values.shape[1]} heads)")
    if "counts" in extra:
        out.print("probes: " + ", ".join(f"{k} {c['counted']}/{c['total']} counted" for k, c in extra["counts"].items())
                  + f" ({extra['mode']} mode)")
    table = Table(title=f"top {top} heads")
    for col in ("rank", "layer", "head", "value"):
        table.add_column(col, justify="right")
    for rank, (layer, head, value) in enumerate(_top_heads(values, top), 1):
        table.add_row(str(rank), str(layer), str(head), f"{value:.4f}")
    out.print(table)
    out.print(_heatmap(values, layers))
    if png:
        out.print(f"wrote {png}")


def _peek_format(path: Path) -> str:
    from headprof.artifacts import SCORES_FORMAT

    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            return json.loads((fh.metadata() or {}).get("headprof", "{}")).get("format", SCORES_FORMAT)
    except Exception:  # noqa: BLE001 - the loader that follows reports the real problem
        return SCORES_FORMAT


def _heatmap(values, layers: list[dict[str, Any]]) -> Table:
    """One coloured cell per head, darker = lower; the last columns summarise the layer."""
    low, high = float(values.min()), float(values.max())
    span = (high - low) or 1.0
    table = Table(title="heatmap (rows: layers, columns: heads)", box=None, pad_edge=False, padding=(0, 0))
    table.add_column("layer", justify="right")
    for head in range(values.shape[1]):
        table.add_column(f"{head:>2}", justify="center")
    table.add_column(" mean / max", justify="left")
    for layer, row in enumerate(values):
        cells = []
        for value in row.tolist():
            level = int(round((value - low) / span * 255))
            cells.append(f"[on rgb({level},{int(level * 0.6)},{255 - level})]  [/]")
        table.add_row(f"{layer} ", *cells, f" {layers[layer]['mean']:.3f} / {layers[layer]['max']:.3f}")
    return table


# ---------------------------------------------------------------- run


@app.command()
def run(
    question: Annotated[str, typer.Option(help="The question about the context.")],
    context_file: Annotated[Path | None, typer.Option("--context-file", help="Text file with the context.")] = None,
    context: Annotated[str | None, typer.Option(help="The context as a string (instead of --context-file).")] = None,
    model: ModelOpt = "smollm2-135m",
    method: Annotated[str | None, typer.Option(help="full | streamingllm | h2o | snapkv | pyramidkv | adakv | headkv | kvzip (default: headkv with --alloc/--scores, else snapkv).")] = None,
    budget: Annotated[int, typer.Option(help="KV entries per head, window included.")] = 128,
    alloc: Annotated[Path | None, typer.Option(help="Allocation artifact (per-head budgets; implies headkv).")] = None,
    scores: Annotated[Path | None, typer.Option(help="Score artifact: allocate HeadKV budgets on the fly.")] = None,
    gqa: Annotated[str | None, typer.Option(help="kv: one selection per KV head | query: per query head (default: the allocation's layout, else kv).")] = None,
    window: Annotated[int, typer.Option(help="Observation window kept in every head.")] = 32,
    kernel: KernelOpt = 7,
    pooling: PoolingOpt = "max",
    max_new_tokens: int = 64,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Answer a question about a long context with a compressed KV cache."""
    from headprof.artifacts import load_alloc, load_scores
    from headprof.runtime import METHODS, Press, build_method, default_method, plan_budgets
    from headprof.runtime.generation import answer_question

    text = _read_context(context_file, context)
    if not question.strip():
        raise HeadprofError("empty question")
    allocation = load_alloc(alloc) if alloc else None
    score_art = load_scores(scores) if scores and not alloc else None
    method = method or default_method(allocation is not None or score_art is not None)
    if method not in METHODS:
        raise HeadprofError(f"unknown method '{method}' ({', '.join(sorted(METHODS))})")
    if allocation is not None:
        layout = allocation.meta.get("gqa", "query")
        if gqa is not None and gqa != layout:
            err.print(f"[yellow]notice:[/yellow] {alloc} holds per-{layout}-head budgets; --gqa {gqa} is ignored")
        gqa = layout
    gqa = gqa or "kv"
    if gqa not in ("kv", "query"):
        raise HeadprofError(f"--gqa must be kv or query, got '{gqa}'")
    compressor = build_method(method, kernel=kernel, pooling=pooling)
    loaded = _load(model, dtype, device)
    plan = plan_budgets(compressor, loaded.info, budget, allocation=allocation, scores=score_art, gqa=gqa,
                        window=window)
    press = Press(loaded.model, compressor, plan, tokenizer=loaded.tokenizer)
    result = answer_question(loaded, press, text, question, max_new_tokens)
    payload = {"answer": result.answer, "kv_bytes": result.kv_bytes, "kv_bytes_full": result.kv_bytes_full,
               "prompt_tokens": result.prompt_tokens, "prefill_s": round(result.prefill_s, 4),
               "compress_s": round(result.compress_s, 4),
               "decode_tokens_per_s": round(result.decode_tokens_per_s, 2), "method": method,
               "compressed": result.compressed}
    if as_json:
        _emit(payload)
        return
    if press.method.compresses and not result.compressed:
        err.print(f"notice: every head's budget covers the {result.prompt_tokens}-token prompt: no compression")
    table = Table(title=f"{method} ({'budgets from ' + str(alloc) if alloc else f'budget {budget}'})", show_header=False)
    for key, value in payload.items():
        table.add_row(key, f"{_mib(value)} ({value} B)" if key.startswith("kv_bytes") else str(value))
    out.print(table)


def _read_context(context_file: Path | None, context: str | None) -> str:
    if (context_file is None) == (context is None):
        raise HeadprofError("give exactly one of --context-file and --context")
    if context_file is not None:
        if not context_file.is_file():
            raise HeadprofError(f"context file {context_file} not found")
        context = context_file.read_text(encoding="utf-8", errors="replace")
    if not context or not context.strip():
        raise HeadprofError("empty context")
    return context


# ---------------------------------------------------------------- eval and ablate

ALL_METHODS = "full,streamingllm,h2o,snapkv,pyramidkv,adakv,headkv,kvzip"


def _read_probe_files(probes: list[Path] | None, task: Path | None = None) -> list:
    """Read (and check) the inputs of eval/ablate before the model loads, so bad input fails fast."""
    from headprof import probes as P

    if task is not None and not task.is_file():
        raise HeadprofError(f"task file {task} not found")
    return [p for path in probes or [] for p in P.load_probes(path)]


def _eval_items(loaded, probe_list: list, task: Path | None, scores_art, max_new_tokens: int):
    from headprof import evaluation as E

    items = []
    if probe_list:
        _warn_foreign_probes(probe_list, loaded.spec.name)
        if scores_art is not None:
            E.check_disjoint(probe_list, scores_art)
        items += E.items_from_probes(loaded.tokenizer, probe_list)
    if task:
        items += E.items_from_task(loaded.tokenizer, task, loaded.info.max_context - max_new_tokens)
    return items


@app.command("eval")
def eval_(
    model: ModelOpt = "smollm2-135m",
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = ALL_METHODS,
    budgets: Annotated[str, typer.Option(help="Comma-separated per-head budgets (each above the window).")] = "64,128,256,512",
    probes: Annotated[list[Path] | None, typer.Option(help="Evaluation probe JSONL (repeatable).")] = None,
    task: Annotated[Path | None, typer.Option(help="LongBench-layout JSONL: context, input, answers.")] = None,
    scores: Annotated[Path | None, typer.Option(help="Score artifact for headkv; default: the model's.")] = None,
    gqa: Annotated[str, typer.Option(help="kv | query cache layout.")] = "kv",
    window: Annotated[int, typer.Option(help="Observation window, kept in every head; it must reach back to the question.")] = 32,
    kernel: KernelOpt = 7,
    pooling: PoolingOpt = "max",
    max_new_tokens: int = 32,
    cache_file: Annotated[Path | None, typer.Option("--cache", help="Results cache; default artifacts/<model>/eval-cache.jsonl.")] = None,
    png: Annotated[Path | None, typer.Option(help="Accuracy-vs-KV-bytes plot; a needle heatmap goes next to it.")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the JSON report to this file.")] = None,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Accuracy against budget and KV bytes, for every method x budget on probes or a task file."""
    from headprof import evaluation as E
    from headprof.artifacts import load_scores
    from headprof.fileio import write_text_atomic

    method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
    budget_list = tuple(_numbers(budgets, "--budgets"))
    config = E.EvalConfig(method_list, budget_list, gqa, window, max_new_tokens, kernel, pooling)
    config.validate()
    if not probes and not task:
        raise HeadprofError("give --probes FILE (repeatable) and/or --task FILE")
    probe_list = _read_probe_files(probes, task)
    default_scores = workspace.scores_file(model)
    scores_path = scores or (default_scores if "headkv" in method_list or default_scores.is_file() else None)
    scores_art = load_scores(scores_path) if scores_path else None
    loaded = _load(model, dtype, device)
    items = _eval_items(loaded, probe_list, task, scores_art, max_new_tokens)
    total = len(items) * sum(1 if m == "full" else len(budget_list) for m in method_list)
    with progress_bar() as bar:
        job = bar.add_task("evaluating", total=total)
        records = E.evaluate(loaded, items, config, scores_art,
                             cache_file or workspace.eval_cache_file(model),
                             on_result=lambda _r: bar.advance(job))
    results = E.summarize(records)
    payload = {"model": loaded.info.model_id, "n_items": len(items), "results": results}
    if png:
        payload["png"] = [str(png), str(E.write_figures(records, results, png, loaded.info.model_id))]
    if report:
        write_text_atomic(report, json.dumps(payload, indent=1) + "\n")
    if as_json:
        _emit(payload)
        return
    table = Table(title=f"accuracy (exact match) / KV MiB, {len(items)} items")
    table.add_column("method")
    for budget in budget_list:
        table.add_column(f"B={budget}", justify="right")
    for row in E.result_cells(results, method_list, budget_list,
                              lambda r: f"{r['accuracy']:.2f} / {r['kv_bytes'] / 2**20:.2f}"):
        table.add_row(*row)
    out.print(table)


@app.command()
def ablate(
    model: ModelOpt = "smollm2-135m",
    scores: Annotated[Path | None, typer.Option(help="Score artifact; default: the model's.")] = None,
    probes: Annotated[list[Path] | None, typer.Option(help="Probe JSONL to measure retrieval on (repeatable).")] = None,
    top: Annotated[str, typer.Option(help="Heads to mask: a percent of all heads (5%) or a count.")] = "5%",
    random_trials: Annotated[int, typer.Option(help="Random head sets to mask.")] = 5,
    method: Annotated[str, typer.Option(help="Score that ranks heads: r2 | retrieval.")] = "r2",
    compare: Annotated[Path | None, typer.Option(help="Another score artifact (e.g. from another haystack) to rank-correlate with.")] = None,
    seed: int = 0,
    max_new_tokens: int = 32,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Mask the top-k heads by score, and k random heads, and compare retrieval accuracy."""
    from headprof import evaluation as E
    from headprof.artifacts import check_model, load_scores

    if not probes:
        raise HeadprofError("give --probes FILE (repeatable) to measure retrieval on")
    if random_trials < 1 or max_new_tokens < 1:
        raise HeadprofError("--random-trials and --max-new-tokens must be at least 1")
    probe_list = _read_probe_files(probes)
    score_art = load_scores(scores or workspace.scores_file(model))
    if method not in score_art.per_probe:
        raise HeadprofError(f"the score artifact has no '{method}' scores ({', '.join(score_art.methods)})")
    k = E.head_count(top, score_art.model.n_layers * score_art.model.n_heads)
    loaded = _load(model, dtype, device)
    check_model(score_art.model, loaded.info, "score artifact")
    items = [i for i in _eval_items(loaded, probe_list, None, score_art, max_new_tokens) if i.kind == "retrieval"]
    if not items:
        raise HeadprofError("no retrieval probes to measure")
    with progress_bar() as bar:
        job = bar.add_task("ablating", total=len(items) * (2 + random_trials))
        result = E.ablate(loaded, score_art, items, k, method, random_trials, seed, max_new_tokens,
                          on_item=lambda: bar.advance(job))
    result["split_half"] = E.split_half_agreement(score_art, method)
    if compare:
        other = load_scores(compare)
        check_model(other.model, score_art.model, "comparison artifact")
        result["vs_compare"] = E.rank_agreement(score_art.scores(method), other.scores(method))
    if as_json:
        _emit(result)
        return
    table = Table(title=f"retrieval accuracy, {len(items)} probes, {k} of {result['heads_total']} heads masked")
    table.add_column("heads masked")
    table.add_column("accuracy", justify="right")
    table.add_row("none", f"{result['no_mask']:.2f}")
    table.add_row(f"top {k} by {method}", f"{result['top_masked']:.2f}")
    table.add_row(f"random {k} ({random_trials} seeds)",
                  f"{result['random_masked_mean']:.2f} ± {result['random_masked_std']:.2f}")
    out.print(table)
    half = result["split_half"]
    out.print(f"split-half agreement of {method} scores: Spearman {half['spearman']:.3f}, "
              f"top-10 overlap {half['top10_overlap']:.0%}")
    if compare:
        other_r = result["vs_compare"]
        out.print(f"vs {compare}: Spearman {other_r['spearman']:.3f}, top-10 overlap {other_r['top10_overlap']:.0%}")


# ---------------------------------------------------------------- merge, import, export, compare


@app.command()
def merge(
    parts: Annotated[list[Path], typer.Argument(help="Shard artifacts from `score --shard i/N`.")],
    out_file: Annotated[Path, typer.Option("--out", help="Merged artifact.")],
    as_json: JsonOpt = False,
) -> None:
    """Join score shards; refuses shards of different runs, overlaps and gaps."""
    from headprof.artifacts import load_scores, merge_scores, save_scores

    merged = merge_scores([load_scores(p) for p in parts])
    save_scores(out_file, merged)
    if as_json:
        _emit({"artifact": str(out_file), "parts": len(parts), "probes": len(merged.probe_ids)})
    else:
        out.print(f"merged {len(parts)} shards ({len(merged.probe_ids)} probes) into {out_file}")


@app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="HeadKV / Retrieval-head JSON: {'layer-head': [scores]}.")],
    model: ModelOpt = "smollm2-135m",
    method: Annotated[str | None, typer.Option(help="retrieval | r2 (default: r2 if the file name says reasoning).")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Default: artifacts/<model>/scores-imported-<method>.safetensors.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read a published head-score file into a score artifact for MODEL (shape-checked)."""
    from headprof.artifacts import save_scores
    from headprof.interop import guess_method, import_scores
    from headprof.models import model_info

    method = method or guess_method(source)
    if method not in ("retrieval", "r2"):
        raise HeadprofError(f"unknown scoring method '{method}' (retrieval, r2)")
    art = import_scores(source, model_info(model), method)
    target = out_file or workspace.imported_scores_file(model, method)
    save_scores(target, art)
    top = _top_heads(art.scores(method), 10)
    if as_json:
        _emit({"artifact": str(target), "method": method, "probes": len(art.probe_ids), "top_heads": top})
    else:
        out.print(f"imported {len(art.probe_ids)} per-probe rows of {method} scores for {art.model.model_id} "
                  f"into {target}")


@app.command()
def export(
    artifact: Annotated[Path, typer.Argument(help="Score artifact.")],
    out_file: Annotated[Path, typer.Option("--out", help="Output JSON file.")],
    fmt: Annotated[str, typer.Option("--format", help="headkv-json")] = "headkv-json",
    method: Annotated[str | None, typer.Option(help="retrieval | r2 (default: r2 if present).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write scores in the HeadKV / Retrieval-head JSON layout, to use them in those codebases."""
    from headprof.artifacts import load_scores
    from headprof.interop import FORMATS, export_scores

    if fmt not in FORMATS:
        raise HeadprofError(f"unknown format '{fmt}' ({', '.join(FORMATS)})")
    art = load_scores(artifact)
    method = method or ("r2" if "r2" in art.per_probe else art.methods[0])
    export_scores(art, out_file, method)
    if as_json:
        _emit({"file": str(out_file), "format": fmt, "method": method, "heads": art.model.n_layers * art.model.n_heads})
    else:
        out.print(f"wrote {method} scores of {art.model.n_layers * art.model.n_heads} heads to {out_file}")


@app.command()
def compare(
    first: Annotated[Path, typer.Argument(help="Score artifact A.")],
    second: Annotated[Path, typer.Argument(help="Score artifact B (same architecture).")],
    method: Annotated[str | None, typer.Option(help="Score of A (default r2 if present).")] = None,
    method_b: Annotated[str | None, typer.Option("--method-b", help="Score of B (default: same as A, else its first).")] = None,
    k: Annotated[str, typer.Option(help="Comma-separated top-k sizes.")] = "10,20,50",
    as_json: JsonOpt = False,
) -> None:
    """Spearman rank correlation and top-k overlap between two score artifacts."""
    from headprof.artifacts import load_scores
    from headprof.heads import rank_agreement

    a, b = load_scores(first), load_scores(second)
    arch = lambda m: (m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim)  # noqa: E731
    if arch(a.model) != arch(b.model):
        raise HeadprofError(f"{first} and {second} are for different architectures: {arch(a.model)} vs {arch(b.model)}")
    method = method or ("r2" if "r2" in a.per_probe else a.methods[0])
    method_b = method_b or (method if method in b.per_probe else b.methods[0])
    sizes = _numbers(k, "--k")
    if not sizes:
        raise HeadprofError("--k needs at least one top-k size")
    rows = []
    for size in sizes:
        agreement = rank_agreement(a.scores(method), b.scores(method_b), size)
        rows.append({"k": size, "spearman": agreement["spearman"], "overlap": agreement[f"top{size}_overlap"]})
    if as_json:
        _emit({"a": str(first), "b": str(second), "method_a": method, "method_b": method_b,
               "spearman": rows[0]["spearman"], "top_k": [{"k": r["k"], "overlap": r["overlap"]} for r in rows]})
        return
    table = Table(title=f"{first} ({method}) vs {second} ({method_b})")
    for col in ("top-k", "overlap", "Spearman (all heads)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["k"]), f"{r['overlap']:.0%}", f"{r['spearman']:.3f}")
    out.print(table)


# ---------------------------------------------------------------- entry point


INTERRUPTED = "[yellow]interrupted[/yellow]: finished probes are checkpointed; rerun the same command to resume"


def main(argv: list[str] | None = None) -> None:
    """Console entry: every HeadprofError, bad option or Ctrl-C ends with one line and a non-zero exit."""
    try:
        code = app(args=argv, standalone_mode=False, prog_name="headprof")
    except HeadprofError as exc:
        err.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except typer.TyperException as exc:  # bad options and arguments (typer's click exceptions)
        err.print(f"[red]error:[/red] {exc.format_message()}", soft_wrap=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except OSError as exc:
        err.print(f"[red]error:[/red] {exc.strerror or exc}: {exc.filename or ''}", soft_wrap=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - a bug or an input we did not foresee: still one line
        if os.environ.get("HEADPROF_DEBUG"):
            raise
        err.print(f"[red]error:[/red] internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                  "(set HEADPROF_DEBUG=1 for the traceback)", soft_wrap=True)
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C into exit code 130 when not standalone
        err.print(INTERRUPTED)
    if isinstance(code, int) and code:
        sys.exit(code)
