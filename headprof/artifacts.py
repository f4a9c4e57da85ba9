"""Score and allocation artifacts: safetensors tensors plus the metadata that ties them to one model.

Score artifacts keep the per-probe scores (`per_probe.<method>`, `[N, L, Hq]`), not only the means:
the head score is the mean over counted probes, and keeping the rows makes shards mergeable,
halves comparable and the HeadKV/Retrieval-head JSON format (a list of per-probe scores per head)
exportable without loss. Every write goes through a temp file and a rename.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from headprof import __version__, validation
from headprof.errors import HeadprofError
from headprof.fileio import atomic_path, sha256_file
from headprof.heads import kv_view
from headprof.models.spec import ModelInfo, checked_model_info

SCORES_FORMAT = "headprof.scores/1"
ALLOC_FORMAT = "headprof.alloc/1"
METHODS = ("retrieval", "r2")


def polarity_counted(right: torch.Tensor, kinds: list[str], groups: list[str], positions: list[str]) -> torch.Tensor:
    """Which probes count: right answers; a reasoning probe only when every probe of its needle at its
    position (the needle asked the other way round: older/younger, ...) is right too, so that an answer
    found by position or by ignoring the comparison does not count."""
    together: dict[tuple[str, str], bool] = {}
    for ok, kind, group, position in zip(right.tolist(), kinds, groups, positions):
        if kind == "reasoning":
            together[(group, position)] = together.get((group, position), True) and ok
    return torch.tensor(
        [
            ok and (kind != "reasoning" or together[(group, position)])
            for ok, kind, group, position in zip(right.tolist(), kinds, groups, positions)
        ],
        dtype=torch.bool,
    )


@dataclass
class ScoreArtifact:
    """Per-probe head scores of one model on one probe set.

    `meta` holds the run description: mode, parameters, probe_set_sha256, shard, created, version.
    `groups` are the probes' needle keys (`probes.needle_key`; older artifacts: the needle id in the
    probe id); `right` says which answers were right, `counted` which probes count (`polarity_counted`).
    """

    model: ModelInfo
    probe_ids: list[str]
    probe_kinds: list[str]
    counted: torch.Tensor
    per_probe: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    right: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.groups:  # probe ids are "<needle>@<length>@<depth>"
            self.groups = [pid.split("@")[0] for pid in self.probe_ids]
        if self.right is None:
            self.right = self.counted.clone()

    @property
    def positions(self) -> list[str]:
        """`<length>@<depth>` of every probe, from its id."""
        return [pid.partition("@")[2] for pid in self.probe_ids]

    @property
    def methods(self) -> list[str]:
        return [m for m in METHODS if m in self.per_probe]

    @property
    def default_method(self) -> str:
        """`r2` when present (the score HeadKV allocates from), else the artifact's only score."""
        return "r2" if "r2" in self.per_probe else self.methods[0]

    def scores(self, method: str) -> torch.Tensor:
        """`[L, Hq]` head scores: the mean over counted probes (zeros when none counted)."""
        if method not in self.per_probe:
            raise HeadprofError(f"artifact has no '{method}' scores (it has: {', '.join(self.methods)})")
        rows = self.per_probe[method][self.counted]
        if rows.shape[0] == 0:
            return torch.zeros(self.model.n_layers, self.model.n_heads)
        return rows.mean(dim=0)

    def counts(self) -> dict[str, dict[str, int]]:
        """Probes total / answered right / counted per kind (they differ in generate mode only)."""
        out: dict[str, dict[str, int]] = {}
        for kind, right, counted in zip(self.probe_kinds, self.right.tolist(), self.counted.tolist()):
            entry = out.setdefault(kind, {"total": 0, "right": 0, "counted": 0})
            entry["total"] += 1
            entry["right"] += int(right)
            entry["counted"] += int(counted)
        return out

    def subset(self, keep: list[int]) -> ScoreArtifact:
        """The rows `keep`, with the per-probe metadata (answers, probe indices) cut to match (`counted` as
        stored: the polarity rule is not re-applied)."""
        index = torch.tensor(keep, dtype=torch.long)
        meta = dict(self.meta)
        for key in ("answers", "probe_indices"):
            if isinstance(meta.get(key), list) and len(meta[key]) == len(self.probe_ids):
                meta[key] = [meta[key][i] for i in keep]
        return ScoreArtifact(
            self.model,
            [self.probe_ids[i] for i in keep],
            [self.probe_kinds[i] for i in keep],
            self.counted[index],
            {m: t[index] for m, t in self.per_probe.items()},
            meta,
            [self.groups[i] for i in keep],
            self.right[index],
        )


@dataclass
class AllocArtifact:
    """Per-head KV budgets (entries, window included), `[L, Hq]` or `[L, Hkv]` by `meta["gqa"]`."""

    model: ModelInfo
    budgets: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def gqa(self) -> str:
        return self.meta.get("gqa", "query")


@dataclass
class HeadTable:
    """A per-head table of one artifact to show: scores (or budgets), what they are, and of which model."""

    values: torch.Tensor
    label: str
    model: ModelInfo
    counts: dict[str, dict[str, int]] | None = None
    mode: str | None = None


def head_table(path: str | Path, method: str | None = None, gqa: str = "query") -> HeadTable:
    """Scores of a score artifact (`method`, default r2; `gqa="kv"` sums each KV group) or budgets of an
    allocation artifact."""
    if artifact_format(path) == ALLOC_FORMAT:
        alloc = load_alloc(path)
        return HeadTable(alloc.budgets.float(), f"budgets ({alloc.meta.get('policy')})", alloc.model)
    art = load_scores(path)
    method = method or art.default_method
    values, label = art.scores(method), f"{method} score"
    if gqa == "kv":
        values, label = kv_view(values, art.model.n_kv_heads), f"{label}, summed per KV head"
    return HeadTable(values, label, art.model, art.counts(), art.meta.get("mode"))


def check_architecture(a: ModelInfo, b: ModelInfo, what: str) -> None:
    """Refuse to compare head scores of models whose heads don't correspond (their weights may differ)."""
    if a.architecture != b.architecture:
        raise HeadprofError(f"{what} are for different architectures: {a.architecture} vs {b.architecture}")


def check_model(artifact_model: ModelInfo, model: ModelInfo, what: str = "artifact") -> None:
    """Refuse an artifact made for another model: architecture, then weights, then id."""
    arch_a, arch_b = artifact_model.architecture, model.architecture
    if arch_a != arch_b:
        raise HeadprofError(
            f"{what} was made for {artifact_model.model_id} (layers, heads, kv heads, head dim = {arch_a}), "
            f"not {model.model_id} {arch_b}"
        )
    if artifact_model.window_layers != model.window_layers or artifact_model.sliding_window != model.sliding_window:
        raise HeadprofError(
            f"{what} was made for {artifact_model.model_id} with sliding-window layers "
            f"{artifact_model.window_layers or 'none'} (window {artifact_model.sliding_window}), but "
            f"{model.model_id} has {model.window_layers or 'none'} (window {model.sliding_window})"
        )
    if artifact_model.fingerprint and model.fingerprint:
        if artifact_model.fingerprint != model.fingerprint:
            raise HeadprofError(
                f"{what} was made for {artifact_model.model_id} weights {artifact_model.fingerprint}, "
                f"but {model.model_id} has weights {model.fingerprint} (another checkpoint, or an fp32 checkpoint "
                "loaded in float16)"
            )
    elif artifact_model.model_id != model.model_id:
        raise HeadprofError(f"{what} was made for {artifact_model.model_id}, not {model.model_id}")


def _header(kind: str, model: ModelInfo, meta: dict[str, Any]) -> dict[str, str]:
    payload = {
        "format": kind,
        "model": model.to_dict(),
        "version": __version__,
        "created": meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **meta,
    }
    return {"headprof": json.dumps(payload, sort_keys=True)}


def artifact_format(path: str | Path) -> str:
    """The format named in an artifact's header (scores when unreadable: its loader then reports the problem)."""
    validation.input_file(path, "artifact", validation.MAX_ARTIFACT_BYTES)
    try:
        with safe_open(str(path), "pt") as fh:
            return json.loads((fh.metadata() or {}).get("headprof", "{}")).get("format", SCORES_FORMAT)
    except Exception:  # noqa: BLE001 - the loader that follows reports the real problem
        return SCORES_FORMAT


def _read(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = validation.input_file(path, "artifact", validation.MAX_ARTIFACT_BYTES)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as fh:
            header = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, an unsupported dtype: all mean "not ours"
        raise HeadprofError(f"artifact {path} is corrupt or not a safetensors file ({exc})") from None
    try:
        meta = json.loads(header["headprof"])
    except (KeyError, ValueError, RecursionError):
        raise HeadprofError(f"artifact {path} has no headprof metadata") from None
    if not isinstance(meta, dict):
        raise HeadprofError(f"artifact {path} has no headprof metadata")
    if meta.get("format") != kind:
        raise HeadprofError(f"artifact {path} is a {meta.get('format', 'unknown')} file, expected {kind}")
    return tensors, meta


def save_scores(path: str | Path, art: ScoreArtifact) -> None:
    """Write a score artifact atomically, checking its shapes and values (means are stored next to the rows)."""
    n_probes = len(art.probe_ids)
    tensors = {
        "counted": art.counted.to(torch.uint8).contiguous(),
        "right": art.right.to(torch.uint8).contiguous(),
    }
    for method, rows in art.per_probe.items():
        validation.score_rows(rows, f"per-probe {method} scores", (n_probes, art.model.n_layers, art.model.n_heads))
        tensors[f"per_probe.{method}"] = rows.float().contiguous()
        tensors[method] = art.scores(method).float().contiguous()
    meta = dict(
        art.meta, probe_ids=art.probe_ids, probe_kinds=art.probe_kinds, probe_groups=art.groups, counts=art.counts()
    )
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=_header(SCORES_FORMAT, art.model, meta))


def load_scores(path: str | Path) -> ScoreArtifact:
    """Read and check a score artifact (dtypes, shapes, finite values, metadata types); its file hash goes
    into `meta['sha256']` so allocations can cite it."""
    tensors, meta = _read(path, SCORES_FORMAT)
    where = f"artifact {path}"
    model = checked_model_info(meta.pop("model", None), where)
    probe_ids = validation.string_list(meta.pop("probe_ids", None), f"{where}: probe_ids")
    n_probes = len(probe_ids)
    if not n_probes:
        raise HeadprofError(f"{where} holds no probes: it has no scores to use")
    if len(set(probe_ids)) != n_probes:
        twice = next(pid for i, pid in enumerate(probe_ids) if pid in probe_ids[:i])
        raise HeadprofError(f"{where}: probe {twice} appears twice (its scores would count twice)")
    kinds = validation.string_list(meta.pop("probe_kinds", None), f"{where}: probe_kinds", n_probes)
    meta.pop("counts", None)
    groups = validation.string_list(meta.pop("probe_groups", None) or [], f"{where}: probe_groups")
    if groups and len(groups) != n_probes:
        raise HeadprofError(f"{where}: probe_groups must list {n_probes} groups")
    if "answers" in meta:
        validation.string_list(meta["answers"], f"{where}: answers", n_probes)
    if "probe_set_size" in meta:
        validation.int_field(meta["probe_set_size"], f"{where}: probe_set_size", 0)
    if "probe_indices" in meta:
        indices = validation.int_list_field(meta["probe_indices"], f"{where}: probe_indices", 0)
        if len(indices) != n_probes or len(set(indices)) != n_probes:
            raise HeadprofError(f"{where}: probe_indices must list {n_probes} distinct probes")
    if "counted" not in tensors:
        raise HeadprofError(f"{where} is missing its 'counted' flags")
    counted = validation.counted_flags(tensors["counted"], f"{where}: counted", n_probes)
    right = validation.counted_flags(tensors["right"], f"{where}: right", n_probes) if "right" in tensors else None
    expected = (n_probes, model.n_layers, model.n_heads)
    per_probe = {
        m: validation.score_rows(tensors[f"per_probe.{m}"], f"{where}: {m} scores", expected).float()
        for m in METHODS
        if f"per_probe.{m}" in tensors
    }
    if not per_probe:
        raise HeadprofError(f"{where} has no scores")
    meta["sha256"] = sha256_file(path)
    return ScoreArtifact(model, probe_ids, kinds, counted, per_probe, meta, groups, right)


def save_alloc(path: str | Path, art: AllocArtifact) -> None:
    """Write an allocation artifact atomically; the budgets' shape must match its GQA layout."""
    heads = art.model.n_kv_heads if art.gqa == "kv" else art.model.n_heads
    if tuple(art.budgets.shape) != (art.model.n_layers, heads):
        raise HeadprofError(f"budgets have shape {tuple(art.budgets.shape)}, expected {(art.model.n_layers, heads)}")
    meta = dict(art.meta, total=int(art.budgets.sum()))
    with atomic_path(path) as tmp:
        save_file(
            {"budgets": art.budgets.to(torch.int32).contiguous()},
            str(tmp),
            metadata=_header(ALLOC_FORMAT, art.model, meta),
        )


def load_alloc(path: str | Path) -> AllocArtifact:
    """Read an allocation artifact: integer budgets of its layout's shape, each at least its window, the window
    within the model, and a total that agrees with the metadata."""
    tensors, meta = _read(path, ALLOC_FORMAT)
    where = f"artifact {path}"
    model = checked_model_info(meta.pop("model", None), where)
    if "budgets" not in tensors:
        raise HeadprofError(f"{where} is missing its budgets")
    if meta.get("gqa", "query") not in ("kv", "query"):
        raise HeadprofError(f"{where}: gqa must be kv or query, got {meta.get('gqa')!r}")
    window = validation.int_field(meta.get("window", 1), f"{where}: window", 1, validation.MAX_CONTEXT)
    art = AllocArtifact(model, tensors["budgets"], meta)
    heads = model.n_kv_heads if art.gqa == "kv" else model.n_heads
    validation.budget_table(
        art.budgets, f"{where}: budgets", (model.n_layers, heads), window, model.max_context, model.window_layers
    )
    if "budget" in meta:  # the nominal mean budget, reported with results
        validation.int_field(meta["budget"], f"{where}: budget", window + 1, validation.MAX_CONTEXT)
    if int(art.budgets.sum()) != meta.get("total"):
        raise HeadprofError(f"{where}: budgets sum to {int(art.budgets.sum())}, its metadata says {meta.get('total')}")
    return art


def merge_scores(parts: list[ScoreArtifact], expected: list[int] | None = None) -> ScoreArtifact:
    """Join shards of one scoring run; refuses parts of different runs, overlaps and gaps.

    `expected`: the probe indices the parts must cover together (default: the whole probe set).
    """
    if not parts:
        raise HeadprofError("nothing to merge")
    first = parts[0]
    for part in parts[1:]:
        check_model(first.model, part.model, "shard")
        for key in ("version", "probe_set_sha256", "mode", "methods", "params"):
            if part.meta.get(key) != first.meta.get(key):
                raise HeadprofError(f"shards differ in {key}: {first.meta.get(key)} vs {part.meta.get(key)}")
    rows: dict[int, tuple[ScoreArtifact, int]] = {}
    seen: set[str] = set()
    for part in parts:
        if part.meta.get("complete") is False:
            raise HeadprofError("a shard is an unfinished checkpoint; finish it first")
        for pos, index in enumerate(part.meta.get("probe_indices", [])):
            if index in rows or part.probe_ids[pos] in seen:
                raise HeadprofError(f"shards overlap: probe {part.probe_ids[pos]} appears twice")
            rows[index] = (part, pos)
            seen.add(part.probe_ids[pos])
    # Compare counts before listing indices: a forged probe_set_size of 10^9 must not allocate 10^9 entries.
    size = len(expected) if expected is not None else first.meta.get("probe_set_size", len(rows))
    if size != len(rows):
        raise HeadprofError(f"shards are incomplete: they hold {len(rows)} probes of a set of {size}")
    wanted = sorted(expected) if expected is not None else list(range(size))
    missing = sorted(set(wanted) - set(rows))
    if missing:
        raise HeadprofError(
            f"shards are incomplete: {len(missing)} of {len(wanted)} probes missing (first index {missing[0]})"
        )
    order = [rows[i] for i in wanted]
    per_probe = {m: torch.stack([p.per_probe[m][pos] for p, pos in order]) for m in first.per_probe}
    ids, kinds = [p.probe_ids[pos] for p, pos in order], [p.probe_kinds[pos] for p, pos in order]
    groups = [p.groups[pos] for p, pos in order]
    right = torch.stack([p.right[pos] for p, pos in order])
    meta = {k: v for k, v in first.meta.items() if k not in ("shard", "sha256")}
    if len({p.meta.get("shard") for p in parts}) == 1 and first.meta.get("shard"):
        meta["shard"] = first.meta["shard"]
    meta.update(answers=[p.meta["answers"][pos] for p, pos in order], probe_indices=wanted)
    # a reasoning needle's two polarities may sit in different shards: count them once joined
    counted = polarity_counted(right, kinds, groups, [pid.partition("@")[2] for pid in ids])
    return ScoreArtifact(first.model, ids, kinds, counted, per_probe, meta, groups, right)
