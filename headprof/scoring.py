"""Head scores of a probe set: every probe scored (`probe_scores.score_probe`), resumable from a checkpoint.

A checkpoint holds every result so far with the run's key (version, weights, probes, parameters, shard);
only a checkpoint of this very run is resumed. Probes of one length and depth share their haystack's tokens
(`SharedPrefix`), which run once per group. The formulas are in `probe_scores.py` and METHOD.md §2.
"""

from __future__ import annotations

import glob
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from headprof import __version__
from headprof.artifacts import SCORES_FORMAT, ScoreArtifact, load_scores, polarity_counted, save_scores
from headprof.capture import AttentionCapture
from headprof.errors import HeadprofError, HeadprofWarning
from headprof.models import LoadedModel
from headprof.probe_scores import ProbeResult, ScoreConfig, SharedPrefix, score_probe, shared_prefix
from headprof.probes import EncodedProbe, Probe, encode_probe, needle_key, probes_sha256

__all__ = [  # the per-probe names too: callers score through this module
    "ProbeResult",
    "ScoreConfig",
    "needle_hashes",
    "remove_checkpoints",
    "run_key",
    "score_probe",
    "score_probes",
]
DEFAULT_CONFIG = ScoreConfig()  # frozen, so one instance serves as every call's default


def needle_hashes(probes: Sequence[Probe]) -> list[str]:
    """Short hashes of the distinct needle texts, so evaluation can refuse probes that share a needle."""
    return sorted({needle_key(p) for p in probes})


def run_key(
    loaded: LoadedModel, probe_set_sha256: str, config: ScoreConfig, extra: dict[str, Any] | None = None
) -> str:
    """What must match for a checkpoint to be resumed: headprof version and format, weights, probes, every
    scoring parameter, and the run's extra metadata (its shard)."""
    blob = json.dumps(
        [__version__, SCORES_FORMAT, loaded.info.to_dict(), probe_set_sha256, asdict(config), extra or {}],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _artifact(
    loaded: LoadedModel,
    results: Sequence[ProbeResult],
    indices: Sequence[int],
    config: ScoreConfig,
    meta: dict[str, Any],
) -> ScoreArtifact:
    info = loaded.info
    empty = torch.zeros(0, info.n_layers, info.n_heads)
    per_probe = {m: torch.stack([r.scores[m] for r in results]) if results else empty for m in config.methods}
    right = torch.tensor([r.right for r in results], dtype=torch.bool)
    groups = [r.group for r in results]
    kinds = [r.kind for r in results]
    meta = {
        "mode": config.mode,
        "methods": list(config.methods),
        "gqa_reduce": "sum",
        "params": {"span": config.span, "criterion": config.criterion, "threshold": config.threshold},
        "answers": [r.answer for r in results],
        "probe_indices": list(indices),
        **meta,
    }
    ids = [r.probe_id for r in results]
    counted = polarity_counted(right, kinds, groups, [r.position for r in results])
    return ScoreArtifact(info, ids, kinds, counted, per_probe, meta, groups, right)


def _load_checkpoint(
    path: Path | None, key: str, probes: Sequence[Probe], config: ScoreConfig
) -> dict[str, ProbeResult]:
    """Results of a checkpoint of this very run; any other checkpoint is set aside with a notice, never merged.

    Besides the run key, every row is checked against the probe set (id, kind, position) and the
    scores asked for, so a checkpoint edited, copied from another run or torn is not trusted.
    """
    if path is None or not path.is_file():
        return {}
    try:
        art = load_scores(path)
    except HeadprofError as exc:
        warnings.warn(f"ignoring the unreadable checkpoint {path}: {exc}", HeadprofWarning, stacklevel=2)
        return {}
    index = {p.id: (i, p.kind) for i, p in enumerate(probes)}
    rows = zip(art.probe_ids, art.probe_kinds, art.meta.get("probe_indices") or [None] * len(art.probe_ids))
    if (
        art.meta.get("run_key") != key
        or art.meta.get("version") != __version__
        or set(art.per_probe) != set(config.methods)
        or any(index.get(pid) != (pos, kind) for pid, kind, pos in rows)
        or "answers" not in art.meta
    ):
        warnings.warn(
            f"checkpoint {path} is from another run (version, model, probes or parameters differ): starting over",
            HeadprofWarning,
            stacklevel=2,
        )
        return {}
    return {
        pid: ProbeResult(
            pid,
            kind,
            bool(art.right[i]),
            {m: t[i] for m, t in art.per_probe.items()},
            art.meta["answers"][i],
            art.groups[i],
            art.positions[i],
        )
        for i, (pid, kind) in enumerate(zip(art.probe_ids, art.probe_kinds))
    }


def score_probes(
    loaded: LoadedModel,
    probes: Sequence[Probe],
    config: ScoreConfig = DEFAULT_CONFIG,
    *,
    select: Sequence[int] | None = None,
    checkpoint: str | Path | None = None,
    on_probe: Callable[[ProbeResult], None] | None = None,
    extra_meta: dict[str, Any] | None = None,
    share_prefixes: bool = True,
    checkpoint_every: float = 30.0,
) -> ScoreArtifact:
    """Score the probes (or the `select`ed indices), resuming from and updating `checkpoint`.

    The checkpoint is rewritten at most every `checkpoint_every` seconds (it holds every result so far, so
    rewriting it after each probe costs time quadratic in the probe count), and always when the run stops
    early (Ctrl-C, an error): only a hard kill loses work, at most `checkpoint_every` seconds of it.

    The returned artifact lists probes in probe-set order whatever the resume history, so an
    interrupted and resumed run equals an uninterrupted one. `share_prefixes` (teacher mode): probes of
    one length and depth share the haystack before their needles (`probes.build_probes` builds them so),
    so their common first tokens run once per group (`SharedPrefix`) and each probe runs only the rest;
    the scores equal the per-probe path's (tests/test_scoring.py). Probes are then scored group by group,
    one group's prefix held at a time.
    """
    config.validate()
    indices = list(range(len(probes))) if select is None else sorted(select)
    probe_sha = probes_sha256(probes)
    meta = dict(
        extra_meta or {},
        run_key=run_key(loaded, probe_sha, config, extra_meta),
        probe_set_sha256=probe_sha,
        probe_set_size=len(probes),
        needle_sha256=needle_hashes(probes),
    )
    ckpt = Path(checkpoint) if checkpoint else None
    done = _load_checkpoint(ckpt, meta["run_key"], probes, config)
    encoded = _encode_all(loaded, probes)
    results: dict[int, ProbeResult] = {}
    # Groups and their prefix lengths come from the whole probe set, so a shard, a rank or a resumed run
    # splits every probe where the full run does: the same arithmetic, bit-identical artifacts.
    prefixes = _prefix_lengths(probes, encoded, list(encoded)) if share_prefixes and config.mode == "teacher" else {}
    order = sorted(indices, key=lambda i: (prefixes.get(i, (None, 0))[0] or "", i))
    held: tuple[str, SharedPrefix] | None = None
    unsaved, saved_at = False, time.monotonic()

    def save_checkpoint() -> None:
        done_idx = sorted(results)
        save_scores(
            ckpt, _artifact(loaded, [results[j] for j in done_idx], done_idx, config, dict(meta, complete=False))
        )

    try:
        with AttentionCapture(loaded.model):
            for i in order:
                prefix = None
                if i in prefixes and probes[i].id not in done:
                    group, length = prefixes[i]
                    if held is None or held[0] != group:
                        held = None  # free the previous group's cache first
                        held = (group, shared_prefix(loaded, encoded[i].prompt_ids[:length]))
                    prefix = held[1]
                result = done.get(probes[i].id) or score_probe(loaded, encoded[i], config, prefix)
                results[i] = result
                if ckpt is not None and probes[i].id not in done:
                    unsaved = True
                    if time.monotonic() - saved_at >= checkpoint_every:
                        save_checkpoint()
                        unsaved, saved_at = False, time.monotonic()
                if on_probe:
                    on_probe(result)
    except BaseException:
        if unsaved:
            save_checkpoint()
        raise
    return _artifact(loaded, [results[i] for i in indices], indices, config, meta)


def _encode_all(loaded: LoadedModel, probes: Sequence[Probe]) -> dict[int, EncodedProbe]:
    """Every probe of the set tokenized, each checked to fit the model's window: not only the probes a shard or
    rank scores, so that under torchrun all ranks fail alike instead of hanging."""
    encoded = {i: encode_probe(loaded.tokenizer, probe) for i, probe in enumerate(probes)}
    limit = loaded.info.max_context
    for i, enc in encoded.items():
        if limit and len(enc.prompt_ids) + len(enc.target_ids) > limit:
            raise HeadprofError(
                f"probe {probes[i].id} needs {len(enc.prompt_ids) + len(enc.target_ids)} tokens, "
                f"beyond the model's {limit}-token window"
            )
    return encoded


def _prefix_lengths(
    probes: Sequence[Probe], encoded: dict[int, EncodedProbe], members: Sequence[int], minimum: int = 32
) -> dict[int, tuple[str, int]]:
    """Probe index -> (group, tokens its group shares): the longest common token prefix of the probes of one
    length and depth among `members`, at least `minimum` tokens, leaving each probe at least one prompt token."""
    groups: dict[str, list[int]] = {}
    for i in members:
        groups.setdefault(f"{probes[i].length}@{probes[i].depth:g}", []).append(i)
    out: dict[int, tuple[str, int]] = {}
    for group, group_members in groups.items():
        if len(group_members) < 2:
            continue
        prompts = [encoded[i].prompt_ids for i in group_members]
        length = min(len(p) for p in prompts) - 1
        first = prompts[0]
        for other in prompts[1:]:
            length = next((j for j in range(length) if other[j] != first[j]), length)
        if length >= minimum:
            out.update({i: (group, length) for i in group_members})
    return out


def remove_checkpoints(target: Path) -> None:
    """Delete the resumable checkpoints of every rank once the artifact is written."""
    for partial in target.parent.glob(glob.escape(target.name) + ".partial*"):  # `[` in a name is not a pattern
        partial.unlink(missing_ok=True)
