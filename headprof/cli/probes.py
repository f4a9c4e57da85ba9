"""`headprof probes build`: needle-in-a-haystack probe sets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import render
from headprof.cli.options import JsonOpt, Kind, ModelOpt, choice, numbers


def build(
    model: ModelOpt = "smollm2-135m",
    kind: Annotated[Kind, choice(Kind, "unknown kind '{value}' ({choices})", "Which needles.")] = Kind.both,
    lengths: Annotated[str, typer.Option(help="Prompt lengths in tokens of the model's tokenizer.")] = "1024,2048",
    depths: Annotated[str, typer.Option(help="Needle depths in percent of the haystack.")] = "10,50,90",
    needles: Annotated[
        list[Path] | None, typer.Option(help="Needle JSONL file(s); default: probes/needles-*.jsonl.")
    ] = None,
    haystack: Annotated[str, typer.Option(help="'builtin' (Python's own docs) or a text file / folder.")] = "builtin",
    seed: int = 0,
    out_file: Annotated[Path | None, typer.Option("--out", help="Default: probes/probes-<model>.jsonl.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a probe set: every needle x length x depth, written as JSONL."""
    from headprof import probes as P
    from headprof import workspace
    from headprof.models.loading import load_tokenizer, quiet_transformers

    kinds = P.KINDS if kind is Kind.both else (kind.value,)
    needle_list = P.select_needles(needles or [workspace.needle_file(k) for k in kinds], kinds)
    quiet_transformers()
    with render.status(f"loading the tokenizer of {model} ..."):
        tokenizer, info = load_tokenizer(model)
    started = time.time()
    probe_list = P.build_probes(
        needle_list,
        tokenizer,
        numbers(lengths, "--lengths"),
        numbers(depths, "--depths", float),
        seed,
        haystack,
        info.max_context,
        tokenizer_name=model,
    )
    target = out_file or workspace.probe_file(model)
    P.write_probes(target, probe_list)
    counts = {k: sum(p.kind == k for p in probe_list) for k in kinds}
    if as_json:
        render.emit(
            {
                "probes": str(target),
                "count": len(probe_list),
                "per_kind": counts,
                "sha256": P.probes_sha256(probe_list),
                "seconds": round(time.time() - started, 2),
            }
        )
    else:
        render.probes_built(target, len(probe_list), counts, sorted({p.n_tokens for p in probe_list}))
