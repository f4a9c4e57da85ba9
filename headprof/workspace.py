"""Every default path in one place: what headprof ships (read-only package data) and where it writes.

Inputs that ship with the package (`importlib.resources`, so they are found from any working directory
after a wheel install): the needle files and, for the embedded model, the committed reference — the
probe sets and the score artifacts built from them — under `headprof/data/reference/<model>/`.

Outputs go to a workspace, never into the installed package: `--workdir DIR`, else `$HEADPROF_WORKDIR`,
else `./headprof-out`, with one folder per model (`<workspace>/<model-slug>/`) holding

    probes.jsonl, eval-probes.jsonl          probe sets (`probes build`, `probes build --eval`)
    eval-probes-<split>.jsonl                generated evaluation probes (`probes build --generated`)
    scores.safetensors, scores-<mode>...     score artifacts (`score`, `import`, shards)
    alloc-b<B>-<policy>[-query].safetensors  allocations (`allocate`)
    eval-cache.jsonl                         evaluation results (`eval`)

A packaged reference folder has the same file names, so a command that reads a model's default file
takes the workspace's copy when there is one and the packaged reference otherwise (`find_input`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

from headprof.errors import HeadprofError
from headprof.models.spec import resolve_model

DEFAULT_ROOT = Path("headprof-out")
ROOT_ENV = "HEADPROF_WORKDIR"

_root_override: Path | None = None
_resources = contextlib.ExitStack()  # keeps packaged files materialised (a no-op for an unpacked wheel)
atexit.register(_resources.close)


# ---------------------------------------------------------------- the workspace


def set_root(path: Path | None) -> None:
    """The CLI's `--workdir` (None: back to `$HEADPROF_WORKDIR` / `./headprof-out`)."""
    global _root_override
    _root_override = path


def root() -> Path:
    """Where outputs go: `--workdir`, else `$HEADPROF_WORKDIR`, else `./headprof-out` (relative paths stay relative).

    Never inside the installed package's data folder: its reference files would be overwritten.
    """
    chosen = _root_override if _root_override is not None else Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    if is_packaged(chosen):
        origin = "--workdir" if _root_override is not None else f"${ROOT_ENV}" if os.environ.get(ROOT_ENV) else "."
        raise HeadprofError(
            f"the workspace {chosen} ({origin}) is inside headprof's package data ({data_dir()}), which is read-only "
            "reference data; choose another folder"
        )
    return chosen


def model_dir(model: str) -> Path:
    """The workspace folder of one model: its probes, scores, allocations and results cache."""
    return root() / resolve_model(model).slug


def probe_file(model: str) -> Path:
    """The scoring probe set built with `model`'s tokenizer."""
    return model_dir(model) / "probes.jsonl"


def eval_probe_file(model: str) -> Path:
    """The evaluation probe set (evaluation needles) built with `model`'s tokenizer."""
    return model_dir(model) / "eval-probes.jsonl"


def generated_probe_file(model: str, split: str) -> Path:
    """The evaluation probe set of generated needles of one split (`probes build --generated --split`)."""
    return model_dir(model) / f"eval-probes-{split}.jsonl"


def scores_file(model: str, mode: str = "teacher", shard: str | None = None) -> Path:
    """`scores.safetensors`, `scores-<mode>.safetensors` for other modes, `.shard<i>of<N>` for a shard."""
    name = "scores" + ("" if mode == "teacher" else f"-{mode}")
    name += f".shard{shard.replace('/', 'of')}" if shard else ""
    return model_dir(model) / f"{name}.safetensors"


def imported_scores_file(model: str, method: str) -> Path:
    """Where `headprof import` puts a published score file."""
    return model_dir(model) / f"scores-imported-{method}.safetensors"


def alloc_file(scores: Path, budget: int, policy: str, gqa: str, model: str) -> Path:
    """`alloc-b<B>-<policy>[-query].safetensors` next to its scores, or in `model`'s workspace folder when the
    scores are packaged data (never write into the installed package)."""
    suffix = "-query" if gqa == "query" else ""
    folder = model_dir(model) if is_packaged(scores) else scores.parent
    return folder / f"alloc-b{budget}-{policy}{suffix}.safetensors"


def eval_cache_file(model: str) -> Path:
    """The evaluation results cache (one JSONL row per method x budget x item)."""
    return model_dir(model) / "eval-cache.jsonl"


# ---------------------------------------------------------------- package data (read-only)


def _packaged(*parts: str) -> Path:
    """A file or folder shipped inside the package, as a real path."""
    return _resources.enter_context(as_file(files("headprof").joinpath("data", *parts)))


def data_dir() -> Path:
    """The package's data folder (needles, references); nothing is ever written under it."""
    return _packaged()


def is_packaged(path: Path) -> bool:
    """Whether `path` lies inside the package's data folder."""
    return Path(path).resolve().is_relative_to(data_dir().resolve())


def needle_file(kind: str) -> Path:
    """The scoring needles of one kind (`retrieval`, `reasoning`)."""
    return _packaged("needles", f"needles-{kind}.jsonl")


def eval_needle_file(kind: str) -> Path:
    """The evaluation needles of one kind, disjoint from the scoring needles."""
    return _packaged("needles", f"eval-needles-{kind}.jsonl")


def reference_file(model: str, name: str) -> Path:
    """A file of `model`'s packaged reference (it exists only for the embedded model)."""
    return _packaged("reference", resolve_model(model).slug, name)


def reference_probes(scores: Path, model: str) -> Path:
    """The probe set a score artifact was most likely scored on: `probes.jsonl` beside it (a workspace folder
    or a packaged reference keeps the two together), else `model`'s default probe set (`find_input`)."""
    beside = Path(scores).parent / "probes.jsonl"
    return beside if beside.is_file() else find_input(model, probe_file(model)).path


@dataclass(frozen=True)
class Input:
    """A default input: the workspace's file, or the packaged reference when the workspace has none."""

    path: Path
    packaged: bool


def find_input(model: str, workspace_path: Path) -> Input:
    """`workspace_path` if it exists, else the packaged reference file of the same name, else `workspace_path`
    (so that the error names where the file was expected)."""
    if workspace_path.exists():
        return Input(workspace_path, False)
    reference = reference_file(model, workspace_path.name)
    if reference.is_file():
        return Input(reference, True)
    return Input(workspace_path, False)
