"""`headprof merge | import | export | compare`: score artifacts from and for other runs and codebases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import render, render_eval
from headprof.cli.options import INTS, SCORE_METHOD_MESSAGE, Format, JsonOpt, ModelOpt, ScoreMethod, choice, numbers


def merge(
    parts: Annotated[list[Path], typer.Argument(metavar="PART", help="Shard artifacts from `score --shard i/N`.")],
    out_file: Annotated[Path, typer.Option("--out", help="Merged artifact.")],
    as_json: JsonOpt = False,
) -> None:
    """Join score shards; refuses shards of different runs, overlaps and gaps."""
    from headprof.artifacts import load_scores, merge_scores, save_scores
    from headprof.validation import check_outputs, no_duplicates

    no_duplicates([str(p.resolve()) for p in parts], "PART")
    check_outputs([("--out", out_file)], parts)
    merged = merge_scores([load_scores(p) for p in parts])
    save_scores(out_file, merged)
    if as_json:
        render.emit({"artifact": str(out_file), "parts": len(parts), "probes": len(merged.probe_ids)})
    else:
        render.line(f"merged {len(parts)} shards ({len(merged.probe_ids)} probes) into {out_file}")


def import_(
    source: Annotated[
        Path, typer.Argument(metavar="FILE", help="HeadKV / Retrieval-head JSON: {'layer-head': [scores]}.")
    ],
    model: ModelOpt = "smollm2-135m",
    method: Annotated[
        ScoreMethod | None,
        choice(
            ScoreMethod,
            SCORE_METHOD_MESSAGE,
            "Which scores the file holds; default: what `export` recorded beside it (FILE.headprof.json).",
        ),
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Default: <workdir>/<model>/scores-imported-<method>.safetensors."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read a published head-score file into a score artifact for MODEL (shape-checked)."""
    from headprof import workspace
    from headprof.artifacts import save_scores
    from headprof.heads import top_heads
    from headprof.interop import import_scores
    from headprof.models import model_info
    from headprof.validation import check_outputs

    info = model_info(model)
    if out_file is not None:
        check_outputs([("--out", out_file)], [source])
    art = import_scores(source, info, method.value if method else None, "--method")
    name = art.methods[0]
    target = out_file or workspace.imported_scores_file(model, name)
    check_outputs([("--out", target)], [source])
    save_scores(target, art)
    if as_json:
        top = top_heads(art.scores(name), 10)
        render.emit({"artifact": str(target), "method": name, "probes": len(art.probe_ids), "top_heads": top})
    else:
        render.line(
            f"imported {len(art.probe_ids)} per-probe rows of {name} scores for {art.model.model_id} into {target}"
        )


def export(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="Score artifact.")],
    out_file: Annotated[Path, typer.Option("--out", help="Output JSON file.")],
    fmt: Annotated[
        Format, choice(Format, "unknown format '{value}' ({choices})", "Output layout.", "--format")
    ] = Format.headkv_json,
    method: Annotated[ScoreMethod | None, choice(ScoreMethod, SCORE_METHOD_MESSAGE, "Default: r2 if present.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write scores in the HeadKV / Retrieval-head JSON layout, to use them in those codebases."""
    from headprof.artifacts import load_scores
    from headprof.interop import export_scores, sidecar_path
    from headprof.validation import check_outputs

    check_outputs([("--out", out_file), ("the score record", sidecar_path(out_file))], [artifact])
    art = load_scores(artifact)
    name = method.value if method else art.default_method
    export_scores(art, out_file, name)
    heads = art.model.n_layers * art.model.n_heads
    if as_json:
        record = str(sidecar_path(out_file))
        render.emit({"file": str(out_file), "record": record, "format": fmt.value, "method": name, "heads": heads})
    else:
        render.line(f"wrote {name} scores of {heads} heads to {out_file} (the score kind: {sidecar_path(out_file)})")


def compare(
    first: Annotated[Path, typer.Argument(metavar="A", help="Score artifact A.")],
    second: Annotated[Path, typer.Argument(metavar="B", help="Score artifact B (same architecture).")],
    method: Annotated[
        ScoreMethod | None, choice(ScoreMethod, SCORE_METHOD_MESSAGE, "Score of A (default r2 if present).")
    ] = None,
    method_b: Annotated[
        ScoreMethod | None,
        choice(ScoreMethod, SCORE_METHOD_MESSAGE, "Score of B (default: same as A, else its first).", "--method-b"),
    ] = None,
    k: Annotated[str, typer.Option(metavar=INTS, help="Top-k sizes.")] = "10,20,50",
    as_json: JsonOpt = False,
) -> None:
    """Spearman rank correlation and top-k overlap between two score artifacts."""
    from headprof.artifacts import check_architecture, load_scores
    from headprof.heads import top_k_agreement

    sizes = numbers(k, "--k")
    a, b = load_scores(first), load_scores(second)
    check_architecture(a.model, b.model, f"{first} and {second}")
    name_a = method.value if method else a.default_method
    name_b = method_b.value if method_b else (name_a if name_a in b.per_probe else b.methods[0])
    rows = top_k_agreement(a.scores(name_a), b.scores(name_b), sizes)
    if as_json:
        top_k = [{"k": r["k"], "overlap": r["overlap"]} for r in rows]
        payload = {"a": str(first), "b": str(second), "method_a": name_a, "method_b": name_b}
        render.emit({**payload, "spearman": rows[0]["spearman"], "top_k": top_k})
    else:
        render_eval.agreement_table(f"{first} ({name_a}) vs {second} ({name_b})", rows)
