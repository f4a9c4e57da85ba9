"""RULER's sample makers: one sample of a task at a size (haystack units, noise, list length), drawn from a
`random.Random` (RULER @ c3f5e3b; "R@c3f5e3b" names the file whose rule is followed). `ruler.py` searches
the size that fits a length."""

from __future__ import annotations

import hashlib
import math
import random
import re
import string
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from headprof.tasks import words as W
from headprof.tasks.ruler_tasks import (
    CWE_PREFIX,
    CWE_TEMPLATE,
    DEPTHS,
    NEEDLE,
    NIAH_PREFIX,
    NIAH_TEMPLATE,
    NOISE,
    VT_PREFIX,
    VT_TEMPLATE,
    RulerTask,
)


@dataclass(frozen=True)
class Sample:
    """One generated sample before rendering: what a row's context, question, answer prefix and answers become."""

    context: str  # the user text up to the end of the haystack (what a query-agnostic cache holds)
    question: str
    prefix: str
    answers: list[str]


def seeded_rng(*parts: object) -> random.Random:
    """A generator seeded from `parts` alone: the same seed, task, length and index give the same sample."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def split_template(template: str) -> tuple[str, str]:
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


def niah_maker(task: RulerTask, essay_words: Sequence[str]) -> Callable[[int, random.Random], Sample]:
    """R@c3f5e3b niah.py: K keys with V values each become needles; Q of the keys are asked."""
    plural = task.value_type
    template, prefix = NIAH_TEMPLATE, NIAH_PREFIX
    type_v = plural
    if task.queries * task.values == 1:  # RULER's singular wording, same replacements in the same order
        for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
            template, prefix = template.replace(old, new), prefix.replace(old, new)
        type_v = plural[:-1]
    head, question = split_template(template)

    def make(n: int, rng: random.Random) -> Sample:
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
        return Sample(
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


def vt_example(rng: random.Random, n_noise: int) -> str:
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


def vt_maker(example_noise: int) -> Callable[[int, random.Random], Sample]:
    """Variable tracking: a chain of `VT_HOPS` assignments hidden in `size` noise blocks, after an example."""
    head, question = split_template(VT_TEMPLATE)

    def make(n: int, rng: random.Random) -> Sample:
        example = vt_example(rng, example_noise)
        value = rng.randint(10000, 99999)
        context, names = _vt_chain(rng, n, 5, value)
        return Sample(
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


def cwe_maker(length: int) -> tuple[Callable[[int, random.Random], Sample], int]:
    """Few-shot example (20 words, 3x/1x below 4096 tokens; 40 words, 10x/3x from 4096) + the real list
    (6x/1x below 4096, 30x/3x from 4096). Returns the maker and the most distinct words it can draw."""
    small, large = W.common_words(), list(W.haystack_vocabulary())
    shot_args, main_args = ((40, 10, 3), (30, 3)) if length >= 4096 else ((20, 3, 1), (6, 1))
    head, question = split_template(CWE_TEMPLATE)

    def make(n: int, rng: random.Random) -> Sample:
        pool = small if n <= len(small) else large
        shot, shot_common = _cwe_list(rng, pool, *shot_args)
        listed, common = _cwe_list(rng, pool, n, *main_args)
        example = (
            CWE_TEMPLATE.format(context=shot)
            + CWE_PREFIX
            + " "
            + " ".join(f"{i}. {w}" for i, w in enumerate(shot_common, 1))
        )
        return Sample(example + "\n" + head + listed + "\n", question, CWE_PREFIX, common)

    return make, len(large)


# ---------------------------------------------------------------- frequent words

FWE_ALPHA = 2.0
FWE_WORD_LENGTH = 6
FWE_ANSWER_RANKS = (2, 3, 4)


def fwe_text(rng: random.Random, total: int, vocab_size: int) -> tuple[str, list[str]]:
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
