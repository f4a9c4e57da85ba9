"""Every default path in one place: needle files, probe sets and artifacts, relative to the working directory.

headprof's commands read and write a small project layout (the repository's own, or any folder with
a `probes/` directory): `probes/needles-<kind>.jsonl`, `probes/probes-<model>.jsonl`,
`artifacts/<model>/scores.safetensors` and so on. Changing where these live (package data, a
`--workdir` option) is a change to this module only.
"""

from __future__ import annotations

from pathlib import Path

from headprof.models.spec import resolve_model

PROBES_DIR = Path("probes")
ARTIFACTS_DIR = Path("artifacts")


def needle_file(kind: str) -> Path:
    """The scoring needles of one kind (`retrieval`, `reasoning`)."""
    return PROBES_DIR / f"needles-{kind}.jsonl"


def eval_needle_file(kind: str) -> Path:
    """The evaluation needles of one kind, disjoint from the scoring needles."""
    return PROBES_DIR / f"eval-needles-{kind}.jsonl"


def probe_file(model: str) -> Path:
    """The scoring probe set built with `model`'s tokenizer."""
    return PROBES_DIR / f"probes-{resolve_model(model).slug}.jsonl"


def eval_probe_file(model: str) -> Path:
    """The evaluation probe set built with `model`'s tokenizer."""
    return PROBES_DIR / f"eval-{resolve_model(model).slug}.jsonl"


def artifact_dir(model: str) -> Path:
    """The folder of `model`'s score and allocation artifacts and its results cache."""
    return ARTIFACTS_DIR / resolve_model(model).slug


def scores_file(model: str, mode: str = "teacher", shard: str | None = None) -> Path:
    """`scores.safetensors`, `scores-<mode>.safetensors` for other modes, `.shard<i>of<N>` for a shard."""
    name = "scores" + ("" if mode == "teacher" else f"-{mode}")
    name += f".shard{shard.replace('/', 'of')}" if shard else ""
    return artifact_dir(model) / f"{name}.safetensors"


def imported_scores_file(model: str, method: str) -> Path:
    """Where `headprof import` puts a published score file."""
    return artifact_dir(model) / f"scores-imported-{method}.safetensors"


def alloc_file(scores: Path, budget: int, policy: str, gqa: str) -> Path:
    """`alloc-b<B>-<policy>[-query].safetensors`, next to the score artifact it was allocated from."""
    suffix = "-query" if gqa == "query" else ""
    return scores.parent / f"alloc-b{budget}-{policy}{suffix}.safetensors"


def eval_cache_file(model: str) -> Path:
    """The evaluation results cache (one JSONL row per method x budget x item)."""
    return artifact_dir(model) / "eval-cache.jsonl"
