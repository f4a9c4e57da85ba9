"""`headprof tasks build` and `headprof tasks list`: benchmark tasks as LongBench-layout JSONL files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from headprof.cli import progress, render
from headprof.cli.options import INTS, JsonOpt, ModelOpt, numbers


def build(
    spec: Annotated[str, typer.Argument(metavar="<ruler|ruler:TASK,...>", help="ruler or ruler:TASK[,TASK].")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="JSONL file to write (LongBench layout); default: <workdir>/<model>/tasks.jsonl."),
    ] = None,
    model: ModelOpt = "smollm2-135m",
    lengths: Annotated[
        str, typer.Option(metavar=INTS, help="Lengths in tokens of the model's tokenizer (prompt + answer).")
    ] = "1024",
    samples: Annotated[int, typer.Option(help="Samples per task and length.")] = 2,
    seed: Annotated[int, typer.Option(help="Generation seed: the same seed writes the same file.")] = 42,
    haystack: Annotated[
        str,
        typer.Option(
            metavar="<builtin|path>", help="Essay haystack: 'builtin' (Python's own docs) or a text file / folder."
        ),
    ] = "builtin",
    as_json: JsonOpt = False,
) -> None:
    """Generate RULER-style task rows for a model's tokenizer, to inspect or to reuse with `eval --task FILE`."""
    from headprof import workspace
    from headprof.errors import HeadprofError
    from headprof.models.loading import load_tokenizer, quiet_transformers
    from headprof.tasks import RulerConfig, TaskSource, is_ruler_spec, write_task_file
    from headprof.validation import check_outputs

    if not is_ruler_spec(spec):
        raise HeadprofError(f"tasks build makes RULER rows: give ruler or ruler:TASK[,TASK], got '{spec}'")
    source = TaskSource.parse(
        spec, RulerConfig(lengths=tuple(numbers(lengths, "--lengths")), samples=samples, seed=seed, haystack=haystack)
    )
    out_file = out_file or workspace.model_dir(model) / "tasks.jsonl"
    check_outputs([("--out", out_file)], source.inputs)
    quiet_transformers()
    with progress.status(f"loading the tokenizer of {model} ..."):
        tokenizer, info = load_tokenizer(model)
    rows, skipped = source.load(tokenizer, info.max_context)
    write_task_file(out_file, rows)
    per_task = {name: sum(r.dataset == name for r in rows) for name in dict.fromkeys(r.dataset for r in rows)}
    if as_json:
        render.emit(
            {
                "tasks": str(out_file),
                "count": len(rows),
                "per_task": per_task,
                "skipped": [render.with_flags(m) for m in skipped],
            }
        )
    else:
        render.task_rows_written(out_file, len(rows), per_task, skipped)


def list_(as_json: JsonOpt = False) -> None:
    """Every task headprof scores: RULER tasks (generated) and LongBench datasets (task files), with metrics."""
    from headprof.tasks import registry

    if as_json:
        render.emit({"tasks": registry()})
    else:
        render.task_registry(registry())
