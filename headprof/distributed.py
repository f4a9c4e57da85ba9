"""Splitting scoring over processes: `torchrun` ranks (data parallel) or `--shard i/N` jobs (batch schedulers).

Scores are means over probes, so the work splits exactly: each worker scores disjoint probes and
keeps per-probe rows; rank 0 (or `headprof merge`) joins the rows in probe-set order. The result is
the same artifact a single process would write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headprof.artifacts import ScoreArtifact, merge_scores
from headprof.errors import HeadprofError, UsageError


def shard_indices(n_probes: int, shard: str | None) -> tuple[list[int], dict[str, Any]]:
    """`i/N` -> probes i, i+N, i+2N, ... (interleaved, so every shard gets all lengths and kinds)."""
    if not shard:
        return list(range(n_probes)), {}
    parts = shard.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() and p.isascii() for p in parts):
        raise UsageError(f"Invalid value for '`shard`': must look like i/N, got '{shard}'")
    index, count = (int(x) for x in parts)
    if count < 1 or not 0 <= index < count:
        raise HeadprofError(f"`shard` {shard}: need 0 <= i < N")
    return list(range(index, n_probes, count)), {"shard": f"{index}/{count}"}


@dataclass
class World:
    """The torch.distributed process group when launched by torchrun / accelerate, else a world of one."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> World:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(local_rank)  # NCCL collectives run on the current device
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> str:
        if self.size > 1 and requested == "auto" and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def checkpoint(self, target: Path) -> Path:
        """This rank's resumable checkpoint next to the artifact (`<target>.partial[-<rank>]`)."""
        return Path(f"{target}.partial-{self.rank}" if self.size > 1 else f"{target}.partial")

    def split(self, indices: list[int]) -> list[int]:
        return indices[self.rank :: self.size]

    def gather(self, part: ScoreArtifact, expected: list[int]) -> ScoreArtifact:
        """Rank 0 receives every rank's rows and returns the merged artifact; other ranks get their own part."""
        if self.size == 1:
            return part
        import torch.distributed as dist

        parts: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(part, parts, dst=0)
        if not self.is_main or parts is None:
            return part
        merged = merge_scores([p for p in parts if p.probe_ids], expected)
        merged.meta["world_size"] = self.size
        return merged
