"""Steps several commands share: default inputs, loading a model behind a spinner, warning about foreign probes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from headprof.cli import progress, render

if TYPE_CHECKING:
    from headprof.artifacts import AllocArtifact, ScoreArtifact
    from headprof.models import LoadedModel
    from headprof.probes import Probe


def load(model: str, dtype: str = "auto", device: str = "auto", device_map: str | None = None) -> LoadedModel:
    """Load a model quietly (no transformers warnings or bars), with a spinner on stderr."""
    from headprof.models.loading import load_model, quiet_transformers

    quiet_transformers()
    with progress.status(f"loading {model}"):
        return load_model(model, dtype=dtype, device=device, device_map=device_map)


def check_before_loading(
    model: str, budgets: Sequence[int] = (), artifacts: Sequence[tuple[str, AllocArtifact | ScoreArtifact | None]] = ()
) -> None:
    """What the model's config alone can refuse, before its weights load: budgets beyond its positions, and
    artifacts made for another model (architecture, sliding windows, id; weights are checked once loaded)."""
    from headprof.artifacts import check_model
    from headprof.errors import HeadprofError
    from headprof.models.loading import model_info

    info = model_info(model)
    too_long = [b for b in budgets if info.max_context and b > info.max_context]
    if too_long:
        raise HeadprofError(
            f"budget {too_long[0]} is larger than any context {info.model_id} takes ({info.max_context} positions)"
        )
    for what, art in artifacts:
        if art is not None:
            check_model(art.model, info, what)


def default_input(model: str, path: Path, what: str) -> Path:
    """A model's default input: the workspace's `path`, else the packaged reference file, said in one notice."""
    from headprof import workspace

    found = workspace.find_input(model, path)
    if found.packaged:
        render.notice(f"no {path} in the workspace: using the packaged reference {what} of {model} ({found.path})")
    return found.path


def default_eval_probes(model: str) -> Path:
    """The model's evaluation probes: the workspace's `eval-probes.jsonl`, else the packaged reference set."""
    from headprof import workspace
    from headprof.errors import HeadprofError

    path = default_input(model, workspace.eval_probe_file(model), "evaluation probes")
    if not path.is_file():
        raise HeadprofError(
            f"no evaluation probes at {path}: run `headprof probes build --eval`, or give --probes FILE"
        )
    return path


def warn_foreign_probes(probe_list: Sequence[Probe], model: str) -> None:
    """Probe lengths and chat templates belong to the tokenizer that built them: say so when it is another's."""
    from headprof.probes import foreign_tokenizers

    others = foreign_tokenizers(probe_list, model)
    if others:
        render.notice(
            f"probes were built with the tokenizer of {', '.join(others)}, "
            f"not {model}: their lengths and chat template are those of that model"
        )
