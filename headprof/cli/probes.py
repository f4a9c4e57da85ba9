"""`headprof probes build`: needle-in-a-haystack probe sets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import render
from headprof.cli.options import INTS, JsonOpt, Kind, ModelOpt, Split, choice, numbers


def build(
    model: ModelOpt = "smollm2-135m",
    kind: Annotated[Kind, choice(Kind, "unknown kind '{value}' ({choices})", "Which needles.")] = Kind.both,
    lengths: Annotated[
        str,
        typer.Option(
            metavar=INTS,
            help="Longest prompt in tokens of the model's tokenizer: every prompt fits within it (whole haystack "
            "sentences, sized for the longest needle and question, so most prompts are some 5-10% shorter).",
        ),
    ] = "1024",
    depths: Annotated[
        str | None,
        typer.Option(metavar="<percent,...>", help="Needle depths in percent of the haystack (default 10,50,90)."),
    ] = None,
    needles: Annotated[
        list[Path] | None,
        typer.Option(metavar="<path>", help="Needle JSONL file (repeatable); default: the packaged needles."),
    ] = None,
    eval_set: Annotated[
        bool,
        typer.Option(
            "--eval", help="The packaged evaluation needles (disjoint from the scoring ones); writes eval-probes.jsonl."
        ),
    ] = False,
    generated: Annotated[
        bool,
        typer.Option(
            "--generated",
            help="Evaluation needles generated from fact templates (topics, names and values of no scoring needle) in "
            "a generated haystack; writes eval-probes-<split>.jsonl. Depths default to 25,75.",
        ),
    ] = False,
    split: Annotated[
        Split,
        choice(Split, "unknown split '{value}' ({choices})", "With --generated: tune on validation, report on test."),
    ] = Split.test,
    count: Annotated[
        int, typer.Option(min=1, metavar="<int>", help="With --generated: how many distinct needles.")
    ] = 40,
    limit: Annotated[
        int | None, typer.Option(min=1, metavar="<int>", help="Only the first N needles of each kind (a quick trial).")
    ] = None,
    haystack: Annotated[
        str, typer.Option(metavar="<builtin|path>", help="'builtin' (Python's own docs) or a text file / folder.")
    ] = "builtin",
    seed: int = 0,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Default: <workdir>/<model>/probes.jsonl (eval-probes.jsonl with --eval)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a probe set: every needle x length x depth, written as JSONL."""
    from headprof import needlegen as G
    from headprof import probes as P
    from headprof import workspace
    from headprof.errors import HeadprofError
    from headprof.models.loading import load_tokenizer, quiet_transformers
    from headprof.validation import check_outputs, no_duplicates

    if sum(map(bool, (needles, eval_set, generated))) > 1:
        raise HeadprofError("give one of --needles, --eval and --generated")
    if generated and (kind is Kind.reasoning or haystack != "builtin" or limit):
        raise HeadprofError("--generated makes retrieval needles in its own haystack: drop --kind, --haystack, --limit")
    default_depths = "25,75" if generated else "10,50,90"
    lengths_list = numbers(lengths, "--lengths")
    depths_list = numbers(depths or default_depths, "--depths", float)
    P.check_grid(lengths_list, depths_list)
    no_duplicates([str(p.resolve()) for p in needles or []], "--needles")
    kinds = ("retrieval",) if generated else P.KINDS if kind is Kind.both else (kind.value,)
    if generated:
        needle_list = G.generate_needles(split.value, count, seed)  # checks --count before the tokenizer loads
    else:
        packaged = workspace.eval_needle_file if eval_set else workspace.needle_file
        needle_list = P.select_needles(needles or [packaged(k) for k in kinds], kinds)
    if limit:
        needle_list = [n for k in kinds for n in [m for m in needle_list if m.kind == k][:limit]]
    if generated:
        target = out_file or workspace.generated_probe_file(model, split.value)
    else:
        target = out_file or (workspace.eval_probe_file(model) if eval_set else workspace.probe_file(model))
    check_outputs([("--out", target)], [*(needles or []), None if haystack == "builtin" else Path(haystack)])
    quiet_transformers()
    with render.status(f"loading the tokenizer of {model}"):
        tokenizer, info = load_tokenizer(model)
    started = time.time()
    with render.progress("building probes", len(needle_list) * len(lengths_list) * len(depths_list)) as advance:
        if generated:
            probe_list = G.build_eval_probes(
                tokenizer,
                split.value,
                count,
                lengths_list,
                depths_list,
                seed,
                info.max_context,
                model,
                lambda _p: advance(),
            )
        else:
            probe_list = P.build_probes(
                needle_list,
                tokenizer,
                lengths_list,
                depths_list,
                seed,
                haystack,
                info.max_context,
                tokenizer_name=model,
                on_probe=lambda _p: advance(),
            )
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
