"""One scoring job as `headprof score` runs it: a shard of the probe set, split over ranks, resumable, written once.

`ScoreJob.plan` reads and checks everything a model is not needed for (the probe file, the shard, the
output path); `held` takes the world (torchrun ranks or one process) and the exclusive lock on this rank's
checkpoint; `score` scores this rank's probes, gathers every rank's rows on rank 0, writes the artifact there
and removes the checkpoints. Sharding and ranks are `distributed.py`; the resumable loop is `scoring.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headprof import workspace
from headprof.artifacts import ScoreArtifact, save_scores
from headprof.distributed import World, shard_indices
from headprof.errors import HeadprofError
from headprof.fileio import exclusive
from headprof.heads import top_heads
from headprof.models import LoadedModel
from headprof.probe_scores import ProbeResult, ScoreConfig
from headprof.probes import Probe, load_probes
from headprof.reliability import artifact_reliability
from headprof.scoring import remove_checkpoints, score_probes


@dataclass
class ScoreJob:
    """The probes to score, where the artifact goes, and which probes are this shard's (`wanted`)."""

    source: Path
    probes: list[Probe]
    target: Path
    wanted: list[int]
    shard_meta: dict[str, Any]
    world: World = field(default_factory=World)

    @classmethod
    def plan(cls, model: str, probes: Path | None, mode: str, shard: str | None, out: Path | None) -> ScoreJob:
        """The job from its inputs, before any model loads: `probes` (default: the workspace's probe set), the
        shard `i/N` (None: all), the output (default: the workspace's scores file of `mode` and shard)."""
        source = probes or workspace.probe_file(model)
        if probes is None and not source.is_file():
            raise HeadprofError(f"no probe set at {source}: run `headprof probes build` first, or give `probes` FILE")
        probe_list = load_probes(source)
        wanted, shard_meta = shard_indices(len(probe_list), shard)
        target = out or workspace.scores_file(model, mode, shard_meta.get("shard"))
        return cls(source, probe_list, target, wanted, shard_meta)

    @property
    def select(self) -> list[int]:
        """The probes this rank scores."""
        return self.world.split(self.wanted)

    @contextmanager
    def held(self) -> Iterator[ScoreJob]:
        """Join the world of ranks and hold this rank's checkpoint: a second job on it is refused."""
        self.world = World.from_env()
        with exclusive(self.world.checkpoint(self.target), "the scores"):
            yield self

    def score(
        self, loaded: LoadedModel, config: ScoreConfig, on_probe: Callable[[ProbeResult], None] | None = None
    ) -> ScoreArtifact | None:
        """Score this rank's probes, then on rank 0 the whole shard's artifact, written to `target`; other
        ranks return None once their rows are sent."""
        part = score_probes(
            loaded,
            self.probes,
            config,
            select=self.select,
            checkpoint=self.world.checkpoint(self.target),
            on_probe=on_probe,
            extra_meta=self.shard_meta,
        )
        art = self.world.gather(part, self.wanted)
        self.world.close()
        if not self.world.is_main:
            return None
        save_scores(self.target, art)
        remove_checkpoints(self.target)
        return art


def score_report(art: ScoreArtifact, target: Path, seconds: float, resampling: tuple[int, int, int]) -> dict:
    """What a scoring run reports: probes counted per kind, the top heads of the main score, and how much the
    scores depend on the needles (split-half agreement and bootstrap intervals, without per-split values)."""
    counts = art.counts()
    method = art.default_method
    reliability = artifact_reliability(art, *resampling)
    return {
        "artifact": str(target),
        "probes_total": sum(c["total"] for c in counts.values()),
        "probes_counted": sum(c["counted"] for c in counts.values()),
        "per_kind": counts,
        "mode": art.meta.get("mode"),
        "span": art.meta.get("params", {}).get("span"),
        "seconds": round(seconds, 2),
        "method": method,
        "top_heads": top_heads(art.scores(method), 10),
        "reliability": {
            m: {key: value for key, value in r.items() if key != "split_half_values"} for m, r in reliability.items()
        },
    }
