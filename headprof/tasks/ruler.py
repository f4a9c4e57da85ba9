"""RULER's synthetic tasks (Hsieh et al. 2024), generated offline at chosen lengths in the model's tokens.

Written for headprof from RULER's task definitions (NVIDIA/RULER @ c3f5e3b; "R@c3f5e3b" below names the
file whose rule is followed). Templates, answer prefixes, needle counts, tokens-to-generate and the
length rule are RULER's; the sources of text are offline:
- essay haystack: the built-in haystack (Python's own documentation prose) or any text folder,
  sliced by words as RULER slices Paul Graham's essays; noise haystack: RULER's repeated sentence;
- word keys/values (`adjective-noun`) and the common-words pool: headprof's own word lists
  (`headprof.tasks.words`) instead of the `wonderwords` package; a cwe task that needs more distinct
  words than they hold uses the built-in haystack's vocabulary (RULER: a downloaded English word list);
- sentences are split with a regex, not nltk.
A sample fits its length exactly as in RULER: tokens of the prompt the model reads (chat template and
answer prefix included) + tokens_to_generate <= length.

Randomness: one `random.Random` per sample, seeded from (seed, task, length, sample index), and one
for the haystack-size search; so the same seed gives the same rows, and adding samples leaves the
earlier ones unchanged. RULER's byte-exact samples can't be reproduced anyway (other tokenizer and text).
RULER's QA tasks (qa_1, qa_2) need SQuAD and HotpotQA, which can't be downloaded here: not generated.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from headprof.errors import HeadprofError
from headprof.tasks.rows import TaskRow
from headprof.tasks.ruler_makers import (
    CWE_COMMON,
    FWE_ALPHA,
    FWE_ANSWER_RANKS,
    VT_EXAMPLE_LENGTH,
    VT_HOPS,
    Sample,
    cwe_maker,
    fwe_text,
    niah_maker,
    seeded_rng,
    split_template,
    vt_example,
    vt_maker,
)
from headprof.tasks.ruler_tasks import DEFAULT_SEED, FWE_PREFIX, FWE_TEMPLATE, RULER_QA, RULER_TASKS, RulerTask


class TooShort(HeadprofError):
    """The length can't hold even the smallest sample of a task."""


@dataclass(frozen=True)
class TokenCounter:
    """How lengths are measured. `prompt(user, prefix)`: tokens of the prompt the model reads for that user
    text and answer prefix (chat template included); `text(s)`: tokens of bare text (vt's in-context example
    and fwe's coded text are sized without the chat template, as RULER sizes them)."""

    prompt: Callable[[str, str], int]
    text: Callable[[str], int]

    @classmethod
    def whitespace(cls) -> TokenCounter:
        """Words as tokens: for tests and for sizing without a tokenizer."""
        return cls(lambda user, prefix: len((user + prefix).split()), lambda text: len(text.split()))


# ---------------------------------------------------------------- sizing


def _too_short(task: str, length: int, why: str = "") -> TooShort:
    return TooShort(f"RULER task {task} does not fit in {length} tokens{why} (use a larger `lengths`)")


def _fit_size(
    make: Callable[[int, random.Random], Sample],
    fits: Callable[[Sample], bool],
    rng: random.Random,
    start: int,
    lo: int,
    cap: int,
    task: str,
    length: int,
) -> int:
    """Largest haystack size that fits (R@c3f5e3b niah.py: binary search on a fresh sample per try).
    The upper bound doubles from `start` until a sample is too long, so a large fixed overhead (vt's example)
    can't make the search stop short; RULER's lower bound is one increment, here `lo` (the smallest size)."""
    if not fits(make(lo, rng)):
        raise _too_short(task, length)
    hi = max(start, lo + 1)
    while hi < cap and fits(make(hi, rng)):
        lo, hi = hi, min(cap, hi * 2)
    best = lo
    while lo <= hi:
        mid = (lo + hi) // 2
        if mid <= cap and fits(make(mid, rng)):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def _samples_fitting(
    task: RulerTask,
    make: Callable[[int, random.Random], Sample],
    fits: Callable[[Sample], bool],
    size: int,
    step: int,
    lo: int,
    samples: int,
    seed: int,
    length: int,
) -> list[Sample]:
    """Each sample starts at the searched size and shrinks by `step` while too long (its draws vary)."""
    out = []
    for index in range(samples):
        rng = seeded_rng(seed, task.name, length, index)
        n = size
        while True:
            sample = make(n, rng)
            if fits(sample):
                break
            if n <= lo:
                raise _too_short(task.name, length)
            n = max(lo, n - step)
        out.append(sample)
    return out


def generate_task(
    name: str,
    counter: TokenCounter,
    length: int,
    samples: int,
    seed: int = DEFAULT_SEED,
    essay: Sequence[str] | None = None,
) -> list[TaskRow]:
    """`samples` rows of one RULER task at `length` tokens (prompt + tokens_to_generate <= length).

    `essay` is the essay haystack as prose sentences (default: `probes.load_haystack("builtin")`); only the
    niah tasks with an essay haystack read it.
    """
    if name in RULER_QA:
        raise HeadprofError(
            f"RULER task {name} needs {RULER_QA[name]}, which headprof can't download; not available offline"
        )
    if name not in RULER_TASKS:
        raise HeadprofError(f"unknown RULER task '{name}' ({', '.join(RULER_TASKS)})")
    if samples < 1:
        raise HeadprofError("`samples` must be at least 1")
    task = RULER_TASKS[name]
    budget = length - task.tokens_to_generate

    def fits(sample: Sample) -> bool:
        return counter.prompt(sample.context + sample.question, sample.prefix) <= budget

    search = seeded_rng(seed, name, length, "size")
    if task.family == "fwe":
        picked = _fwe_samples(task, counter, length, samples, seed, search, fits)
    else:
        if task.family == "niah":
            if task.haystack == "essay" and not essay:
                from headprof.probes import load_haystack

                essay = load_haystack("builtin")
            words = " ".join(essay or ()).split()
            make = niah_maker(task, words)
            # R@c3f5e3b niah.py increments: essay 500 words, noise/needles 25 (5 below 4096 tokens); headprof
            # uses 50 words for essays below 4096 tokens, where RULER is not run.
            if task.haystack == "essay":
                step, lo = (500 if length >= 4096 else 50), 10
            else:
                step, lo = (25 if length >= 4096 else 5), task.keys * task.values
            cap = 10**7
        elif task.family == "vt":
            example_noise = _vt_example_size(counter, seed)
            make = vt_maker(example_noise)
            step, lo, cap = (10 if length >= 4096 else 5), VT_HOPS + 1, 10**6
        elif task.family == "cwe":
            make, cap = cwe_maker(length)
            step, lo = 10, CWE_COMMON
        else:  # pragma: no cover - the registry only holds the families above
            raise HeadprofError(f"RULER task {name}: unknown family {task.family}")
        size = _fit_size(make, fits, search, 4 * lo, lo, cap, name, length)
        picked = _samples_fitting(task, make, fits, size, step, lo, samples, seed, length)
    return [
        TaskRow(
            f"{name}-{length}-{i}",
            name,
            s.context,
            s.question,
            tuple(s.answers),
            length,
            None,
            s.prefix,
            task.tokens_to_generate,
        )
        for i, s in enumerate(picked)
    ]


def _vt_example_size(counter: TokenCounter, seed: int) -> int:
    """Noise blocks of the in-context example: as many as fit its 500 tokens (bare text, no chat template)."""
    rng = seeded_rng(seed, "vt", "example")
    budget = VT_EXAMPLE_LENGTH - RULER_TASKS["vt"].tokens_to_generate
    n = VT_HOPS + 1
    while counter.text(vt_example(rng, n + 1)) <= budget:
        n += 1
    return n


def _fwe_samples(
    task: RulerTask,
    counter: TokenCounter,
    length: int,
    samples: int,
    seed: int,
    search: random.Random,
    fits: Callable[[Sample], bool],
) -> list[Sample]:
    """R@c3f5e3b freq_words_extraction.py: vocabulary (length - 50) // 50 words; the word count starts at
    (length - 50) // 6 and grows by (length - 50) // 32 while the coded text is shorter than length - 50
    tokens, then steps back once; a sample shrinks by that step while its prompt is too long."""
    vocab_size = (length - task.tokens_to_generate) // 50
    if vocab_size < 4:
        raise _too_short(task.name, length, " (the coded vocabulary needs 4 words)")
    budget = length - task.tokens_to_generate
    total, step = budget // 6, max(1, budget // 32)
    while counter.text(fwe_text(search, total, vocab_size)[0]) < budget:
        total += step
    total -= step
    head, question = split_template(FWE_TEMPLATE)
    smallest = math.ceil(max(FWE_ANSWER_RANKS) ** FWE_ALPHA * math.pi**2 / 6)  # every answer word occurs
    out = []
    for index in range(samples):
        rng = seeded_rng(seed, task.name, length, index)
        n = total
        while True:
            if n < smallest:
                raise _too_short(task.name, length)
            text, answers = fwe_text(rng, n, vocab_size)
            sample = Sample(head + text + "\n", question, FWE_PREFIX, answers)
            if fits(sample):
                break
            n -= step
        out.append(sample)
    return out


# ---------------------------------------------------------------- suites


def resolve(spec: str) -> list[str]:
    """`ruler` -> every offline RULER task; `ruler:a,b` -> those; a QA task or an unknown name is an error."""
    if spec == "ruler":
        return list(RULER_TASKS)
    if not spec.startswith("ruler:") or not spec[6:].strip():
        raise HeadprofError(f"not a RULER task spec: '{spec}' (ruler or ruler:TASK[,TASK])")
    names = [n.strip() for n in spec[6:].split(",") if n.strip()]
    for name in names:
        if name in RULER_QA:
            raise HeadprofError(
                f"RULER task {name} needs {RULER_QA[name]}, which headprof can't download; not available offline"
            )
        if name not in RULER_TASKS:
            raise HeadprofError(f"unknown RULER task '{name}' (one of: {', '.join(RULER_TASKS)})")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class RulerConfig:
    """What to generate: task names, target lengths (tokens), samples per task and length, seed, essay source."""

    tasks: tuple[str, ...] = tuple(RULER_TASKS)
    lengths: tuple[int, ...] = (1024,)
    samples: int = 4
    seed: int = DEFAULT_SEED
    haystack: str = "builtin"

    def validate(self, max_context: int = 0) -> None:
        if not self.tasks:
            raise HeadprofError("no RULER task chosen")
        if not self.lengths or any(n <= 0 for n in self.lengths):
            raise HeadprofError(f"`lengths` must be positive token counts, got {list(self.lengths)}")
        if len(set(self.lengths)) != len(self.lengths):
            raise HeadprofError("repeated `lengths` would generate the same rows twice")
        if max_context and max(self.lengths) > max_context:
            raise HeadprofError(f"length {max(self.lengths)} exceeds the model's context window ({max_context} tokens)")
        if self.samples < 1:
            raise HeadprofError("`samples` must be at least 1")
        uses_essay = any(RULER_TASKS[t].haystack == "essay" for t in self.tasks if t in RULER_TASKS)
        if uses_essay and self.haystack != "builtin" and not Path(self.haystack).exists():
            raise HeadprofError(f"haystack {self.haystack} not found")  # before the model loads, not after


def generate_suite(
    config: RulerConfig, counter: TokenCounter, max_context: int = 0, skip_too_short: bool = False
) -> tuple[list[TaskRow], list[str]]:
    """Rows of every task x length, and (with `skip_too_short`) one line per task x length that can't fit,
    instead of an error: a whole suite at a short length still runs the tasks that fit."""
    config.validate(max_context)
    essay: list[str] = []
    if any(RULER_TASKS[t].haystack == "essay" for t in config.tasks):
        from headprof.probes import load_haystack

        essay = load_haystack(config.haystack)
    rows: list[TaskRow] = []
    skipped: list[str] = []
    for length in config.lengths:
        for name in config.tasks:
            try:
                rows += generate_task(name, counter, length, config.samples, config.seed, essay)
            except TooShort as exc:
                if not skip_too_short:
                    raise
                skipped.append(str(exc))
    if not rows:
        raise HeadprofError("no RULER task fits the chosen lengths: " + "; ".join(skipped))
    return rows, skipped
