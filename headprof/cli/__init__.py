"""The `headprof` command: a thin typer layer over the library. Errors are one line, never a traceback.

Each command parses its options (`options.py`), calls the library, and hands what it got to
`render.py`, the one module that prints. Command modules: `probes`, `score`, `allocate`, `show`,
`run`, `evaluate` (eval, ablate), `interop` (merge, import, export, compare).
"""

from __future__ import annotations

import os
import sys

import typer

from headprof.cli import allocate, evaluate, interop, probes, render, run, score, show
from headprof.errors import HeadprofError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Profile attention heads for long-context retrieval and reasoning; compress the KV cache.",
)
probes_app = typer.Typer(no_args_is_help=True, help="Build and inspect needle-in-a-haystack probe sets.")
app.add_typer(probes_app, name="probes")
probes_app.command("build")(probes.build)
app.command()(score.score)
app.command()(allocate.allocate)
app.command()(show.show)
app.command()(run.run)
app.command("eval")(evaluate.eval_)
app.command()(evaluate.ablate)
app.command()(interop.merge)
app.command("import")(interop.import_)
app.command()(interop.export)
app.command()(interop.compare)


def main(argv: list[str] | None = None) -> None:
    """Console entry: every HeadprofError, bad option or Ctrl-C ends with one line and a non-zero exit."""
    try:
        code = app(args=argv, standalone_mode=False, prog_name="headprof")
    except HeadprofError as exc:
        render.error(str(exc))
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except typer.TyperException as exc:  # bad options and arguments (typer's click exceptions)
        render.error(exc.format_message())
        sys.exit(getattr(exc, "exit_code", 2))
    except OSError as exc:
        render.error(f"{exc.strerror or exc}: {exc.filename or ''}")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - a bug or an input we did not foresee: still one line
        if os.environ.get("HEADPROF_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        render.error(f"internal error: {type(exc).__name__}: {first} (set HEADPROF_DEBUG=1 for the traceback)")
        sys.exit(1)
    if code == 130:  # typer turns Ctrl-C into exit code 130 when not standalone
        render.interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)
