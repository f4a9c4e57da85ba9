"""Checks at the edges: what users type, what files hold, where outputs go. Pure (no transformers, no model).

Every command runs these before any model loads or any long step starts, so bad input costs a second,
not a scoring run, and fails with one line. Three kinds of check:

- output paths (`check_outputs`): not a directory, not a special file such as `/dev/full`, not one of
  the command's inputs (compared as resolved files, so `./s.st` and `s.st` are the same), not another
  output of the same command, with a writable parent; nothing is created here.
- numbers and text the user typed (`int_list`, `finite`, `positive`, `text`): a malformed value is a
  `UsageError` (exit 2, like typer's own usage errors), a well-formed but nonsensical one a `HeadprofError`.
- what files hold (`score_rows`, `counted_flags`, `budget_table`, `string_list`, `int_list_field`, ...):
  dtypes, finiteness, shapes, metadata types; a file is refused whole rather than used in part.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headprof.errors import HeadprofError, UsageError
from headprof.package_data import data_dir, is_packaged

if TYPE_CHECKING:
    import torch

# ---------------------------------------------------------------- output paths


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output(target: str | Path, inputs: Iterable[str | Path | None] = (), what: str = "output") -> Path:
    """One output path: refuse a directory, a special file, an input, an unwritable parent; create nothing."""
    target = Path(target)
    if str(target).strip() == "" or target.name in ("", ".", ".."):
        raise HeadprofError(f"{what} '{target}' is not a file name")
    if target.is_dir():
        raise HeadprofError(f"{what} {target} is a directory")
    if target.exists() and not target.is_file():
        raise HeadprofError(f"{what} {target} exists and is not a regular file (a device, a pipe or a socket)")
    if is_packaged(target):
        raise HeadprofError(f"{what} {target} is inside headprof's package data ({data_dir()}); write it elsewhere")
    for source in inputs:
        if source is not None and _same_file(target, Path(source)):
            raise HeadprofError(f"{what} {target} is also an input of this command: it would overwrite {source}")
    existing = target.parent.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise HeadprofError(f"output directory {target.parent} is not writable ({existing})")
    return target


def check_outputs(outputs: Sequence[tuple[str, str | Path | None]], inputs: Iterable[str | Path | None] = ()) -> None:
    """Every `(what, path)` output of a command (None: not asked for), against its inputs and each other."""
    sources = [Path(p) for p in inputs if p is not None]
    chosen = [(what, Path(path)) for what, path in outputs if path is not None]
    for i, (what, path) in enumerate(chosen):
        check_output(path, sources, what)
        for other_what, other in chosen[:i]:
            if _same_file(path, other):
                raise HeadprofError(f"{what} and {other_what} are the same file ({path})")


# ---------------------------------------------------------------- input paths

# Far above any real input (a score artifact of 10k probes of an 80-layer, 64-head model is 200 MB; a probe
# or task file of 100k rows a few hundred MB), far below what would exhaust memory when read whole.
MAX_TEXT_BYTES = 1 << 30
MAX_ARTIFACT_BYTES = 1 << 33


def input_file(path: str | Path, what: str, limit: int | None = MAX_TEXT_BYTES, hint: str = "") -> Path:
    """An input must be a regular file of at most `limit` bytes, checked before it is opened: opening a named
    pipe blocks until a writer comes, and reading `/dev/zero` (or a symlink to it) never ends.

    `hint` follows the "not found" message (how to make the file). None as `limit`: any size (model weights).
    """
    path = Path(path)
    try:
        mode = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise HeadprofError(f"{what} {path} not found{hint}") from None
    except OSError as exc:
        raise HeadprofError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode.st_mode):
        raise HeadprofError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(mode.st_mode):
        raise HeadprofError(f"{what} {path} is not a regular file (a device, a pipe or a socket); not reading it")
    if limit is not None and mode.st_size > limit:
        raise HeadprofError(f"{what} {path} is {mode.st_size} bytes, more than the {limit} bytes headprof reads")
    return path


def read_lines(path: str | Path, what: str, hint: str = "") -> list[str]:
    """The lines of a UTF-8 text input (a regular file of bounded size, `input_file`), split at
    newlines only: U+2028 or U+0085 inside a JSON string is text, not the end of a row."""
    path = input_file(path, what, hint=hint)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HeadprofError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise HeadprofError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


# ---------------------------------------------------------------- what users type


def int_list(text: str, option: str, minimum: int | None = None) -> list[int]:
    """`--lengths 1024,2048`: comma-separated integers; a malformed entry is a usage error (exit 2)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.lstrip("+-").isdigit() or not part.isascii():
            raise UsageError(f"Invalid value for '{option}': '{text}' is not a comma-separated list of integers")
        values.append(int(part))
    if minimum is not None and any(v < minimum for v in values):
        raise HeadprofError(f"{option} values must be at least {minimum}, got {text}")
    return values


def float_list(text: str, option: str) -> list[float]:
    """`--depths 10,50,90`: comma-separated finite numbers; a malformed entry is a usage error (exit 2)."""
    values = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError:
            raise UsageError(
                f"Invalid value for '{option}': '{text}' is not a comma-separated list of numbers"
            ) from None
        values.append(finite(value, option))
    return values


def no_duplicates(values: Sequence[Any], option: str) -> None:
    """Refuse a repeated entry: a method, budget or file given twice would be counted twice."""
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise HeadprofError(f"{option} lists {value} twice")
        seen.add(value)


def finite(value: float, option: str) -> float:
    """A number that is neither NaN nor infinite (`--temp nan` would make every budget silently uniform)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise HeadprofError(f"{option} must be a finite number, got {value}")
    return value


def positive(value: float, option: str, minimum: float = 1) -> float:
    """A finite number of at least `minimum`."""
    finite(value, option)
    if value < minimum:
        raise HeadprofError(f"{option} must be at least {minimum:g}, got {value:g}")
    return value


def budget_and_window(budget: int, window: int, what: str = "") -> None:
    """A per-head budget holds the window plus at least one selected entry: budget > window >= 1."""
    if window < 1:
        raise HeadprofError(f"{what}window must be at least 1, got {window}")
    if budget <= window:
        raise HeadprofError(f"{what}budget {budget} must be larger than the window {window}")


def resampling(splits: int, bootstrap: int) -> None:
    """`--splits` and `--bootstrap` of the reliability report, checked before the scores they describe are made."""
    for value, option in ((splits, "`splits`"), (bootstrap, "`bootstrap`")):
        if value < 1:
            raise HeadprofError(f"{option} must be at least 1, got {value}")


def is_text(value: str) -> bool:
    """Real Unicode a tokenizer can encode: argv bytes that are not UTF-8, and JSON's `\\ud800` escapes,
    arrive as lone surrogates, which are not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(value: str, option: str) -> str:
    """User text that must be real Unicode (`is_text`)."""
    if not is_text(value):
        raise HeadprofError(f"{option} contains bytes that are not UTF-8 text")
    return value


def percent_or_count(value: str, option: str) -> tuple[float, bool]:
    """`5%` -> (5.0, True), `12` -> (12, False); anything else (`inf%`, `abc`) is a usage error."""
    body, share = (value[:-1], True) if value.endswith("%") else (value, False)
    try:
        number = float(body) if share else int(body)
    except ValueError:
        raise UsageError(f"Invalid value for '{option}': '{value}' is not a count or a percent") from None
    if not math.isfinite(number):
        raise UsageError(f"Invalid value for '{option}': '{value}' is not a count or a percent")
    return number, share


# ---------------------------------------------------------------- what files hold


def string_list(value: Any, what: str, length: int | None = None) -> list[str]:
    """A metadata list of strings (probe ids, kinds, answers), of `length` entries when given."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HeadprofError(f"{what} must be a list of strings")
    if length is not None and len(value) != length:
        raise HeadprofError(f"{what} has {len(value)} entries, expected {length}")
    return value


def int_list_field(value: Any, what: str, low: int = 0, high: int | None = None) -> list[int]:
    """A metadata list of integers in `[low, high)` (probe indices)."""
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise HeadprofError(f"{what} must be a list of integers")
    if any(v < low or (high is not None and v >= high) for v in value):
        raise HeadprofError(f"{what} has entries outside [{low}, {high})")
    return value


def int_field(value: Any, what: str, low: int = 0, high: int | None = None) -> int:
    """A metadata integer in `[low, high]`."""
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise HeadprofError(f"{what} must be an integer {bound}, got {value!r}")
    return value


def score_rows(rows: torch.Tensor, what: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-probe scores: a float tensor of `shape` with only finite values (one NaN would skew every mean)."""
    if not rows.dtype.is_floating_point:
        raise HeadprofError(f"{what} are {str(rows.dtype).removeprefix('torch.')}, expected floating-point scores")
    if tuple(rows.shape) != tuple(shape):
        raise HeadprofError(f"{what} have shape {tuple(rows.shape)}, expected {tuple(shape)}")
    bad = (~rows.isfinite()).nonzero()
    if len(bad):
        raise HeadprofError(f"{what} hold {len(bad)} non-finite values (NaN or inf), first at {bad[0].tolist()}")
    return rows


def counted_flags(flags: torch.Tensor, what: str, length: int) -> torch.Tensor:
    """The per-probe `counted` flags: `length` values, each 0 or 1."""
    import torch

    if flags.dtype not in (torch.uint8, torch.bool) or tuple(flags.shape) != (length,):
        raise HeadprofError(f"{what} must be {length} flags of 0/1, got {flags.dtype} {tuple(flags.shape)}")
    if flags.dtype == torch.uint8 and bool((flags > 1).any()):
        raise HeadprofError(f"{what} must be 0 or 1")
    return flags.bool()


def budget_table(
    budgets: torch.Tensor,
    what: str,
    shape: tuple[int, int],
    window: int,
    max_context: int,
    window_layers: Sequence[int] = (),
) -> None:
    """Allocation budgets: integers of `shape`, each at least the window (>= 1), the window within the model;
    a sliding-window layer's row is 0 (its cache is its rolling window, never budgeted)."""
    if budgets.dtype.is_floating_point or budgets.dtype.is_complex or str(budgets.dtype) == "torch.bool":
        raise HeadprofError(f"{what} are {str(budgets.dtype).removeprefix('torch.')}, expected integer budgets")
    if tuple(budgets.shape) != tuple(shape):
        raise HeadprofError(f"{what} have shape {tuple(budgets.shape)}, expected {tuple(shape)}")
    if window < 1 or (max_context and window >= max_context):
        raise HeadprofError(f"{what}: window {window} must be at least 1 and below the model's {max_context} tokens")
    windowed = set(window_layers)
    if any(bool(budgets[i].any()) for i in windowed):
        raise HeadprofError(f"{what} budget sliding-window layers {sorted(windowed)}, whose rows must be 0")
    budgeted = [i for i in range(shape[0]) if i not in windowed]
    if budgeted:
        low, high = int(budgets[budgeted].min()), int(budgets[budgeted].max())
        if low < window:
            raise HeadprofError(f"{what} include {low}, below the window {window} every head keeps")
        if max_context and high > max_context:
            raise HeadprofError(f"{what} include {high}, beyond the model's {max_context} positions")


# Far above any real model, far below what would allocate gigabytes from a forged header.
MAX_HEADS, MAX_CONTEXT = 1 << 14, 1 << 30
