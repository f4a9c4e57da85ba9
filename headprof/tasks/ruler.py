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

import hashlib
import math
import random
import re
import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from headprof.errors import HeadprofError
from headprof.tasks import words as W
from headprof.tasks.rows import TaskRow

# R@c3f5e3b scripts/data/synthetic/niah.py: the noise haystack repeats this block, one block per unit.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# R@c3f5e3b scripts/data/synthetic/constants.py (templates and answer prefixes, verbatim).
NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
    "are assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the 10 most common words in the above list?"
)
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"

# R@c3f5e3b niah.py: needles go at one of 40 evenly spaced depths of the essay haystack.
DEPTHS = [round(100 * i / 39) for i in range(40)]
DEFAULT_SEED = 42  # RULER's random_seed for a single chunk (R@c3f5e3b scripts/data/prepare.py)


@dataclass(frozen=True)
class RulerTask:
    """One entry of R@c3f5e3b scripts/synthetic.yaml: generator family, its arguments and tokens_to_generate
    (RULER's answer length per family, scripts/data/synthetic/constants.py `TASKS[...]['tokens_to_generate']`:
    niah 128, variable_tracking 30, common_words_extraction 120, freq_words_extraction 50)."""

    name: str
    family: str  # niah | vt | cwe | fwe
    tokens_to_generate: int
    metric: str = "string_match_all"
    haystack: str = ""  # niah: noise | essay | needle
    key_type: str = "words"
    value_type: str = "numbers"
    keys: int = 1
    values: int = 1
    queries: int = 1
    description: str = ""


def _niah(name: str, haystack: str, key: str, value: str, k: int, v: int, q: int, what: str) -> RulerTask:
    return RulerTask(
        name,
        "niah",
        128,
        haystack=haystack,
        key_type=key,
        value_type=value,
        keys=max(k, q),
        values=v,
        queries=q,
        description=what,
    )


RULER_TASKS: dict[str, RulerTask] = {
    t.name: t
    for t in (
        _niah("niah_single_1", "noise", "words", "numbers", 1, 1, 1, "one number needle in repeated noise"),
        _niah("niah_single_2", "essay", "words", "numbers", 1, 1, 1, "one number needle in prose"),
        _niah("niah_single_3", "essay", "words", "uuids", 1, 1, 1, "one uuid needle in prose"),
        _niah("niah_multikey_1", "essay", "words", "numbers", 4, 1, 1, "one needle among 3 distractor needles"),
        _niah("niah_multikey_2", "needle", "words", "numbers", 1, 1, 1, "a haystack made of distractor needles"),
        _niah("niah_multikey_3", "needle", "uuids", "uuids", 1, 1, 1, "distractor needles, uuid keys and values"),
        _niah("niah_multivalue", "essay", "words", "numbers", 1, 4, 1, "4 values for one key, all asked"),
        _niah("niah_multiquery", "essay", "words", "numbers", 4, 1, 4, "4 keys asked at once"),
        RulerTask("vt", "vt", 30, description="variable tracking: a 4-hop assignment chain in noise"),
        RulerTask("cwe", "cwe", 120, description="the 10 most common words of a numbered list"),
        RulerTask("fwe", "fwe", 50, description="the 3 most frequent coded words of a Zipf-distributed text"),
    )
}
RULER_QA = {"qa_1": "SQuAD", "qa_2": "HotpotQA"}


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


@dataclass(frozen=True)
class _Sample:
    context: str  # the user text up to the end of the haystack (what a query-agnostic cache holds)
    question: str
    prefix: str
    answers: list[str]


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _split_template(template: str) -> tuple[str, str]:
    """(text before the context, question after it): the context ends where RULER's `{context}\\n` ends."""
    head, question = template.split("{context}\n")
    return head, question


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Regex stand-in for nltk's sent_tokenize: a break after . ! ? followed by an upper-case letter or digit."""
    return [s for s in _SENTENCE_END.split(text) if s]


# ---------------------------------------------------------------- values


def _draw(kind: str, rng: random.Random) -> str:
    """R@c3f5e3b niah.py generate_random: 7-digit numbers, adjective-noun words, version-4 uuids."""
    if kind == "numbers":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        adjectives, nouns = _KEY_WORDS
        return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown value type {kind}")


_KEY_WORDS = W.key_words()


def _fresh(kind: str, rng: random.Random, taken: set[str]) -> str:
    """A draw not in `taken` (RULER does not check; here keys and values of one sample are always distinct)."""
    while True:
        value = _draw(kind, rng)
        if value not in taken:
            taken.add(value)
            return value


# ---------------------------------------------------------------- niah


def _niah_maker(task: RulerTask, essay_words: Sequence[str]) -> Callable[[int, random.Random], _Sample]:
    """R@c3f5e3b niah.py: K keys with V values each become needles; Q of the keys are asked."""
    plural = task.value_type
    template, prefix = NIAH_TEMPLATE, NIAH_PREFIX
    type_v = plural
    if task.queries * task.values == 1:  # RULER's singular wording, same replacements in the same order
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template, prefix = template.replace(old, new), prefix.replace(old, new)
        type_v = plural[:-1]
    head, question = _split_template(template)

    def make(n: int, rng: random.Random) -> _Sample:
        taken: set[str] = set()
        keys = [_fresh(task.key_type, rng, taken) for _ in range(task.keys)]
        values = [[_fresh(task.value_type, rng, taken) for _ in range(task.values)] for _ in keys]
        needles = [NEEDLE.format(type_needle_v=plural, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
        rng.shuffle(needles)
        if task.haystack == "essay":
            text = " ".join(essay_words[i % len(essay_words)] for i in range(n))
            sentences = split_sentences(text)
            cuts = sorted(int(len(sentences) * d / 100) for d in rng.sample(DEPTHS, len(needles)))
            bounds = [0, *cuts, len(sentences)]
            pieces = []
            for i, needle in enumerate(needles):
                pieces += [" ".join(sentences[bounds[i] : bounds[i + 1]]), needle]
            pieces.append(" ".join(sentences[bounds[-2] :]))
            haystack = " ".join(p for p in pieces if p)
        else:
            if task.haystack == "noise":
                lines = [NOISE] * n
            else:  # distractor needles: other keys (never one of the sample's keys), other values
                lines = [
                    NEEDLE.format(
                        type_needle_v=plural, key=_fresh(task.key_type, rng, taken), value=_draw(task.value_type, rng)
                    )
                    for _ in range(n)
                ]
            for position, needle in zip(sorted(rng.sample(range(n), len(needles)), reverse=True), needles):
                lines.insert(position, needle)
            haystack = "\n".join(lines)
        asked = rng.sample(range(task.keys), task.queries)
        query_keys = [keys[i] for i in asked]
        query = query_keys[0] if len(query_keys) == 1 else ", ".join(query_keys[:-1]) + ", and " + query_keys[-1]
        return _Sample(
            head.format(type_needle_v=type_v) + haystack + "\n",
            question.format(type_needle_v=type_v, query=query),
            prefix.format(type_needle_v=type_v, query=query),
            [v for i in asked for v in values[i]],
        )

    return make


# ---------------------------------------------------------------- variable tracking

VT_HOPS = 4
VT_EXAMPLE_LENGTH = 500  # R@c3f5e3b variable_tracking.py: the in-context example is built for 500 tokens


def _names(rng: random.Random, count: int, size: int) -> list[str]:
    taken: set[str] = set()
    out = []
    while len(out) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=size))
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def _vt_chain(rng: random.Random, n_noise: int, name_size: int, value: int) -> tuple[str, list[str]]:
    """R@c3f5e3b variable_tracking.py: `VAR A = 12345`, `VAR B = VAR A `, ... inserted in order into noise."""
    names = _names(rng, VT_HOPS + 1, name_size)
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j]} = VAR {names[j - 1]} " for j in range(1, len(names))]
    lines = [NOISE] * n_noise
    for offset, (position, line) in enumerate(zip(sorted(rng.sample(range(len(lines)), len(chain))), chain)):
        lines.insert(position + offset, line)
    return "\n".join(lines).replace(". \n", ".\n"), names


def _vt_example(rng: random.Random, n_noise: int) -> str:
    """The one worked example RULER prepends: 3-letter names, its own value, the answer after the prefix."""
    value = rng.randint(10000, 99999)
    context, names = _vt_chain(rng, n_noise, 3, value)
    return (
        VT_TEMPLATE.format(context=context, query=value)
        + VT_PREFIX.format(num_v=VT_HOPS + 1, query=value)
        + " "
        + " ".join(names)
        + "\n"
    )


def _vt_maker(example_noise: int) -> Callable[[int, random.Random], _Sample]:
    head, question = _split_template(VT_TEMPLATE)

    def make(n: int, rng: random.Random) -> _Sample:
        example = _vt_example(rng, example_noise)
        value = rng.randint(10000, 99999)
        context, names = _vt_chain(rng, n, 5, value)
        return _Sample(
            example + head + context + "\n",
            question.format(query=value),
            VT_PREFIX.format(num_v=VT_HOPS + 1, query=value),
            names,
        )

    return make


# ---------------------------------------------------------------- common words

CWE_COMMON = 10


def _cwe_list(
    rng: random.Random, pool: Sequence[str], distinct: int, common_times: int, rare_times: int
) -> tuple[str, list[str]]:
    """R@c3f5e3b common_words_extraction.py get_example: 10 words `common_times` times, the rest
    `rare_times`, shuffled and numbered `1. w 2. w ...`."""
    chosen = rng.sample(list(pool), distinct)
    common, rare = chosen[:CWE_COMMON], chosen[CWE_COMMON:]
    listed = common * common_times + rare * rare_times
    rng.shuffle(listed)
    return " ".join(f"{i}. {w}" for i, w in enumerate(listed, 1)), common


def _cwe_maker(length: int) -> tuple[Callable[[int, random.Random], _Sample], int]:
    """Few-shot example (20 words, 3x/1x below 4096 tokens; 40 words, 10x/3x from 4096) + the real list
    (6x/1x below 4096, 30x/3x from 4096). Returns the maker and the most distinct words it can draw."""
    small, large = W.common_words(), list(W.haystack_vocabulary())
    shot_args, main_args = ((40, 10, 3), (30, 3)) if length >= 4096 else ((20, 3, 1), (6, 1))
    head, question = _split_template(CWE_TEMPLATE)

    def make(n: int, rng: random.Random) -> _Sample:
        pool = small if n <= len(small) else large
        shot, shot_common = _cwe_list(rng, pool, *shot_args)
        listed, common = _cwe_list(rng, pool, n, *main_args)
        example = (
            CWE_TEMPLATE.format(context=shot)
            + CWE_PREFIX
            + " "
            + " ".join(f"{i}. {w}" for i, w in enumerate(shot_common, 1))
        )
        return _Sample(example + "\n" + head + listed + "\n", question, CWE_PREFIX, common)

    return make, len(large)


# ---------------------------------------------------------------- frequent words

FWE_ALPHA = 2.0
FWE_WORD_LENGTH = 6
FWE_ANSWER_RANKS = (2, 3, 4)


def _fwe_text(rng: random.Random, total: int, vocab_size: int) -> tuple[str, list[str]]:
    """R@c3f5e3b freq_words_extraction.py: coded words with Zipf counts int(total * k^-alpha / zeta(alpha)) for
    rank k; rank 1 is the noise word '...', the answer is ranks 2-4."""
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=FWE_WORD_LENGTH)))
    ranked = sorted(vocab)
    rng.shuffle(ranked)
    ranked[0] = "..."
    zeta = math.pi**2 / 6  # zeta(2)
    listed = [w for k, w in enumerate(ranked, 1) for _ in range(int(total * k**-FWE_ALPHA / zeta))]
    rng.shuffle(listed)
    return " ".join(listed), ranked[1:4]


# ---------------------------------------------------------------- sizing


def _too_short(task: str, length: int, why: str = "") -> TooShort:
    return TooShort(f"RULER task {task} does not fit in {length} tokens{why} (use a larger --lengths)")


def _fit_size(
    make: Callable[[int, random.Random], _Sample],
    fits: Callable[[_Sample], bool],
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
    make: Callable[[int, random.Random], _Sample],
    fits: Callable[[_Sample], bool],
    size: int,
    step: int,
    lo: int,
    samples: int,
    seed: int,
    length: int,
) -> list[_Sample]:
    """Each sample starts at the searched size and shrinks by `step` while too long (its draws vary)."""
    out = []
    for index in range(samples):
        rng = _rng(seed, task.name, length, index)
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
        raise HeadprofError("--samples must be at least 1")
    task = RULER_TASKS[name]
    budget = length - task.tokens_to_generate

    def fits(sample: _Sample) -> bool:
        return counter.prompt(sample.context + sample.question, sample.prefix) <= budget

    search = _rng(seed, name, length, "size")
    if task.family == "fwe":
        picked = _fwe_samples(task, counter, length, samples, seed, search, fits)
    else:
        if task.family == "niah":
            if task.haystack == "essay" and not essay:
                from headprof.probes import load_haystack

                essay = load_haystack("builtin")
            words = " ".join(essay or ()).split()
            make = _niah_maker(task, words)
            # R@c3f5e3b niah.py increments: essay 500 words, noise/needles 25 (5 below 4096 tokens); headprof
            # uses 50 words for essays below 4096 tokens, where RULER is not run.
            if task.haystack == "essay":
                step, lo = (500 if length >= 4096 else 50), 10
            else:
                step, lo = (25 if length >= 4096 else 5), task.keys * task.values
            cap = 10**7
        elif task.family == "vt":
            example_noise = _vt_example_size(counter, seed)
            make = _vt_maker(example_noise)
            step, lo, cap = (10 if length >= 4096 else 5), VT_HOPS + 1, 10**6
        elif task.family == "cwe":
            make, cap = _cwe_maker(length)
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
    rng = _rng(seed, "vt", "example")
    budget = VT_EXAMPLE_LENGTH - RULER_TASKS["vt"].tokens_to_generate
    n = VT_HOPS + 1
    while counter.text(_vt_example(rng, n + 1)) <= budget:
        n += 1
    return n


def _fwe_samples(
    task: RulerTask,
    counter: TokenCounter,
    length: int,
    samples: int,
    seed: int,
    search: random.Random,
    fits: Callable[[_Sample], bool],
) -> list[_Sample]:
    """R@c3f5e3b freq_words_extraction.py: vocabulary (length - 50) // 50 words; the word count starts at
    (length - 50) // 6 and grows by (length - 50) // 32 while the coded text is shorter than length - 50
    tokens, then steps back once; a sample shrinks by that step while its prompt is too long."""
    vocab_size = (length - task.tokens_to_generate) // 50
    if vocab_size < 4:
        raise _too_short(task.name, length, " (the coded vocabulary needs 4 words)")
    budget = length - task.tokens_to_generate
    total, step = budget // 6, max(1, budget // 32)
    while counter.text(_fwe_text(search, total, vocab_size)[0]) < budget:
        total += step
    total -= step
    head, question = _split_template(FWE_TEMPLATE)
    smallest = math.ceil(max(FWE_ANSWER_RANKS) ** FWE_ALPHA * math.pi**2 / 6)  # every answer word occurs
    out = []
    for index in range(samples):
        rng = _rng(seed, task.name, length, index)
        n = total
        while True:
            if n < smallest:
                raise _too_short(task.name, length)
            text, answers = _fwe_text(rng, n, vocab_size)
            sample = _Sample(head + text + "\n", question, FWE_PREFIX, answers)
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
            raise HeadprofError(f"--lengths must be positive token counts, got {list(self.lengths)}")
        if len(set(self.lengths)) != len(self.lengths):
            raise HeadprofError("repeated --lengths would generate the same rows twice")
        if max_context and max(self.lengths) > max_context:
            raise HeadprofError(f"length {max(self.lengths)} exceeds the model's context window ({max_context} tokens)")
        if self.samples < 1:
            raise HeadprofError("--samples must be at least 1")
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
