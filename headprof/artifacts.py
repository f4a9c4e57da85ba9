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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from headprof import __version__
from headprof.errors import HeadprofError
from headprof.fileio import atomic_path, sha256_file
from headprof.heads import kv_view
from headprof.models.spec import ModelInfo

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
        """The artifact of some probes (`counted` as stored: the polarity rule is not re-applied)."""
        index = torch.tensor(keep, dtype=torch.long)
        return ScoreArtifact(
            self.model,
            [self.probe_ids[i] for i in keep],
            [self.probe_kinds[i] for i in keep],
            self.counted[index],
            {m: t[index] for m, t in self.per_probe.items()},
            dict(self.meta),
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
    try:
        with safe_open(str(path), "pt") as fh:
            return json.loads((fh.metadata() or {}).get("headprof", "{}")).get("format", SCORES_FORMAT)
    except Exception:  # noqa: BLE001 - the loader that follows reports the real problem
        return SCORES_FORMAT


def _read(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise HeadprofError(f"artifact {path} not found")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise HeadprofError(f"artifact {path} is corrupt or not a safetensors file ({exc})") from None
    try:
        meta = json.loads(header["headprof"])
    except (KeyError, ValueError):
        raise HeadprofError(f"artifact {path} has no headprof metadata") from None
    if meta.get("format") != kind:
        raise HeadprofError(f"artifact {path} is a {meta.get('format', 'unknown')} file, expected {kind}")
    return tensors, meta


def save_scores(path: str | Path, art: ScoreArtifact) -> None:
    """Write a score artifact atomically, checking its shapes (means are stored next to the per-probe rows)."""
    n_probes = len(art.probe_ids)
    tensors = {
        "counted": art.counted.to(torch.uint8).contiguous(),
        "right": art.right.to(torch.uint8).contiguous(),
    }
    for method, rows in art.per_probe.items():
        if rows.shape != (n_probes, art.model.n_layers, art.model.n_heads):
            raise HeadprofError(
                f"per-probe {method} scores have shape {tuple(rows.shape)}, "
                f"expected {(n_probes, art.model.n_layers, art.model.n_heads)}"
            )
        tensors[f"per_probe.{method}"] = rows.float().contiguous()
        tensors[method] = art.scores(method).float().contiguous()
    meta = dict(
        art.meta, probe_ids=art.probe_ids, probe_kinds=art.probe_kinds, probe_groups=art.groups, counts=art.counts()
    )
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=_header(SCORES_FORMAT, art.model, meta))


def load_scores(path: str | Path) -> ScoreArtifact:
    """Read and check a score artifact; its file hash goes into `meta['sha256']` so allocations can cite it."""
    tensors, meta = _read(path, SCORES_FORMAT)
    try:
        model = ModelInfo(**meta.pop("model"))
        probe_ids, kinds = meta.pop("probe_ids"), meta.pop("probe_kinds")
        groups = meta.pop("probe_groups", None) or []
        meta.pop("counts", None)
        per_probe = {m: tensors[f"per_probe.{m}"] for m in METHODS if f"per_probe.{m}" in tensors}
        counted = tensors["counted"].bool()
        right = tensors["right"].bool() if "right" in tensors else None
    except (KeyError, TypeError) as exc:
        raise HeadprofError(f"artifact {path} is missing {exc}") from None
    expected = (len(probe_ids), model.n_layers, model.n_heads)
    for method, rows in per_probe.items():
        if tuple(rows.shape) != expected:
            raise HeadprofError(f"artifact {path}: {method} scores have shape {tuple(rows.shape)}, expected {expected}")
    if (
        not per_probe
        or counted.shape != (len(probe_ids),)
        or (right is not None and right.shape != counted.shape)
        or (groups and len(groups) != len(probe_ids))
    ):
        raise HeadprofError(f"artifact {path} has no scores or inconsistent probe counts")
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
    """Read an allocation artifact, refusing budgets that disagree with its metadata."""
    tensors, meta = _read(path, ALLOC_FORMAT)
    try:
        model = ModelInfo(**meta.pop("model"))
        budgets = tensors["budgets"]
    except (KeyError, TypeError) as exc:
        raise HeadprofError(f"artifact {path} is missing {exc}") from None
    art = AllocArtifact(model, budgets, meta)
    heads = model.n_kv_heads if art.gqa == "kv" else model.n_heads
    if tuple(budgets.shape) != (model.n_layers, heads) or int(budgets.sum()) != meta.get("total"):
        raise HeadprofError(f"artifact {path}: budgets of shape {tuple(budgets.shape)} do not match its metadata")
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
        for key in ("probe_set_sha256", "mode", "methods", "params"):
            if part.meta.get(key) != first.meta.get(key):
                raise HeadprofError(f"shards differ in {key}: {first.meta.get(key)} vs {part.meta.get(key)}")
    rows: dict[int, tuple[ScoreArtifact, int]] = {}
    for part in parts:
        if part.meta.get("complete") is False:
            raise HeadprofError("a shard is an unfinished checkpoint; finish it first")
        for pos, index in enumerate(part.meta.get("probe_indices", [])):
            if index in rows:
                raise HeadprofError(f"shards overlap: probe {part.probe_ids[pos]} appears twice")
            rows[index] = (part, pos)
    wanted = sorted(expected) if expected is not None else list(range(first.meta.get("probe_set_size", len(rows))))
    missing = sorted(set(wanted) - set(rows))
    if missing or len(rows) != len(wanted):
        raise HeadprofError(
            f"shards are incomplete: {len(missing)} of {len(wanted)} probes missing"
            + (f" (first index {missing[0]})" if missing else " or extra probes present")
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
