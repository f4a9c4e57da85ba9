"""The `headprof` command: a thin typer layer over the library. Errors are one line, never a traceback.

Each command parses its options (`options.py`), calls the library, and hands what it got to
`render.py` (and `render_eval.py`), the modules that print; `progress.py` draws progress. Command
modules: `probes`, `score`, `allocate`, `show`, `run`, `evaluate` (eval, ablate), `check` (the score
drift gate), `tasks` (tasks build, tasks list), `interop` (merge, import, export, compare).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from headprof import workspace
from headprof.cli import allocate, check, evaluate, interop, probes, render, run, score, show, tasks, tune
from headprof.errors import HeadprofError, HeadprofWarning
from headprof.workspace import DEFAULT_ROOT, ROOT_ENV

# Help is plain text (rich_markup_mode=None): help strings are not read as markup, and flags show no type.
# It uses the terminal's width up to 120 columns (80 by default).
app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
    help="Profile attention heads for long-context retrieval and reasoning; compress the KV cache.",
)
probes_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Build and inspect needle-in-a-haystack probe sets."
)


_invoked: list[str] = []  # the command being run, for its Ctrl-C message


def _print_version(value: bool) -> None:
    if value:
        from headprof import __version__

        render.line(f"headprof {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            metavar="<dir>",
            help=f"Outputs go here, a folder per model (default: ${ROOT_ENV}, else ./{DEFAULT_ROOT}).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print headprof's version and exit."),
    ] = False,
) -> None:
    workspace.set_root(workdir)
    _invoked[:] = [ctx.invoked_subcommand or ""]


app.add_typer(probes_app, name="probes")
# Short help for the command list (plain help cuts a docstring's first line at the terminal's width).
probes_app.command("build", short_help="Build a probe set: needles x lengths x depths, as JSONL.")(probes.build)
tasks_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Benchmark tasks: RULER rows generated offline, LongBench files.",
)
app.add_typer(tasks_app, name="tasks")
tasks_app.command("build", short_help="Generate RULER task rows as JSONL.")(tasks.build)
tasks_app.command("list", short_help="The RULER tasks and LongBench datasets with their metrics.")(tasks.list_)
app.command(short_help="Score every head on the probes (captured attention).")(score.score)
app.command(short_help="Per-head KV budgets from head scores (HeadKV, uniform, PyramidKV).")(allocate.allocate)
app.command(short_help="Top heads and a heatmap of a score or allocation artifact.")(show.show)
app.command(short_help="Re-score a sample of a reference's probes; exit 1 if head scores drifted.")(check.check)
app.command(short_help="Answer a question about a long context with a compressed KV cache.")(run.run)
app.command("eval", short_help="Accuracy against KV bytes, every method x budget.")(evaluate.eval_)
app.command(short_help="Pick a policy per budget on validation probes, report it on test probes.")(tune.tune)
app.command(short_help="Mask the top heads (and matched random ones) and compare retrieval.")(evaluate.ablate)
app.command(short_help="Join score shards into one artifact.")(interop.merge)
app.command("import", short_help="Read a published head-score JSON into a score artifact.")(interop.import_)
app.command(short_help="Write scores as HeadKV / Retrieval-head JSON.")(interop.export)
app.command(short_help="Spearman and top-k overlap of two score artifacts.")(interop.compare)


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001, ANN202
    """Library notices (`HeadprofWarning`) print as `notice:` lines; other warnings as Python prints them."""
    if issubclass(category, HeadprofWarning):
        render.notice(str(message))
    else:
        _default_show_warning(message, category, filename, lineno, file, line)


_default_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    """Console entry: every HeadprofError, bad option or Ctrl-C ends with one line and a non-zero exit."""
    for stream in (sys.stdout, sys.stderr):  # a path or answer that is not UTF-8 prints escaped, never crashes
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    _invoked[:] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always", HeadprofWarning)
        warnings.showwarning = _show_warning
        _main(argv)


def _main(argv: list[str] | None) -> None:
    try:
        code = app(args=argv, standalone_mode=False, prog_name="headprof")
    except HeadprofError as exc:
        render.error(str(exc))
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except typer.TyperException as exc:  # bad options and arguments (typer's click exceptions)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `headprof` or `headprof probes` alone: the help, exit 0
            render.help_text(exc.format_message())
            return
        render.error(exc.format_message())
        sys.exit(getattr(exc, "exit_code", 2))
    except OSError as exc:
        render.error(f"{exc.strerror or exc}: {exc.filename or ''}")
        sys.exit(1)
    except RecursionError:
        render.error("input nested too deeply to read")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - a bug or an input we did not foresee: still one line
        if os.environ.get("HEADPROF_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        render.error(f"internal error: {type(exc).__name__}: {first} (set HEADPROF_DEBUG=1 for the traceback)")
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C into exit code 130 when not standalone
        render.interrupted(_invoked[0] if _invoked else None)
    if isinstance(code, int) and code:
        sys.exit(code)
