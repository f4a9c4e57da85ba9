"""Benchmark tasks: RULER's synthetic tasks generated offline, and LongBench-layout task files.

- `ruler`: RULER task registry and generators (`RULER_TASKS`, `generate_suite`).
- `longbench`: LongBench's per-dataset prompts, answer lengths and middle truncation.
- `metrics`: RULER string match and LongBench's metrics (pure functions of strings).
- `rows`: the LongBench JSONL row layout shared by both (`TaskRow`, read/write).
- `prompts`: row -> prompt (chat template, answer prefix) and per-row scoring.
- `words`: offline word lists for keys, values and the common-words pool.
Nothing here imports torch or transformers; a tokenizer is passed in where lengths are measured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from headprof.errors import HeadprofError
from headprof.tasks.longbench import DATASET_MAXLEN
from headprof.tasks.metrics import DATASET_METRIC
from headprof.tasks.rows import TaskRow, read_task_file, write_task_file
from headprof.tasks.ruler import RulerConfig, generate_suite, resolve
from headprof.tasks.ruler_tasks import RULER_QA, RULER_TASKS

__all__ = [
    "TaskRow",
    "read_task_file",
    "write_task_file",
    "RulerConfig",
    "generate_suite",
    "is_ruler_spec",
    "resolve",
    "registry",
    "TaskSource",
]


def is_ruler_spec(spec: str) -> bool:
    """`ruler` or `ruler:TASK[,TASK]` name the generated suite; anything else passed as a task is a file."""
    return spec == "ruler" or spec.startswith("ruler:")


def registry() -> list[dict[str, Any]]:
    """Every task headprof can score: suite, name, metric, answer length; RULER's QA tasks marked unavailable."""
    rows: list[dict[str, Any]] = [
        {
            "suite": "ruler",
            "task": t.name,
            "metric": t.metric,
            "max_new_tokens": t.tokens_to_generate,
            "description": t.description,
        }
        for t in RULER_TASKS.values()
    ]
    rows += [
        {
            "suite": "ruler",
            "task": name,
            "metric": "string_match_part",
            "max_new_tokens": 32,
            "description": f"needs {source}: not available offline",
        }
        for name, source in RULER_QA.items()
    ]
    rows += [
        {
            "suite": "longbench",
            "task": name,
            "metric": DATASET_METRIC[name],
            "max_new_tokens": limit,
            "description": "task file",
        }
        for name, limit in DATASET_MAXLEN.items()
    ]
    return rows


@dataclass(frozen=True)
class TaskSource:
    """What `--task` names, checked before any model loads: a task file's rows (read and validated), or
    a RULER generation config (task names and lengths checked; the rows need the model's tokenizer)."""

    spec: str
    rows: tuple[TaskRow, ...] = ()
    ruler: RulerConfig | None = None

    @classmethod
    def parse(cls, spec: str, config: RulerConfig | None = None) -> TaskSource:
        """`ruler`, `ruler:TASK[,TASK]` (generated with `config`'s lengths, samples, seed, haystack) or a file."""
        if not spec or not spec.strip():
            raise HeadprofError("`task` needs ruler, ruler:TASK[,TASK] or a task file")
        if is_ruler_spec(spec):
            chosen = replace(config or RulerConfig(), tasks=tuple(resolve(spec)))
            chosen.validate()
            return cls(spec, ruler=chosen)
        return cls(spec, rows=tuple(read_task_file(spec)))

    @property
    def inputs(self) -> tuple[str, ...]:
        """The files this source reads (a task file, a haystack): no output of the command may be one of them."""
        if self.ruler is None:
            return (self.spec,)
        return () if self.ruler.haystack == "builtin" else (self.ruler.haystack,)

    def load(self, tokenizer: Any, max_context: int = 0) -> tuple[list[TaskRow], list[str]]:
        """The rows, and notices: RULER tasks skipped because a length is too short for them (only for the
        whole suite, `ruler`; a named task that can't fit is an error), or rows scored generically."""
        from headprof.tasks.prompts import token_counter, unknown_dataset_notice

        if self.ruler is not None:
            return generate_suite(
                self.ruler, token_counter(tokenizer), max_context, skip_too_short=self.spec == "ruler"
            )
        notice = unknown_dataset_notice(self.rows)
        return list(self.rows), [notice] if notice else []
