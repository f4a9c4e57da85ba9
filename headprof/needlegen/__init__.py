"""Evaluation needles generated from fact templates, in a generated haystack: items the scoring never saw.

The packaged evaluation needles were one-for-one paraphrases of scoring needles in the scoring haystack, so an
evaluation on them measured in-distribution transfer. Here every evaluation needle comes from a fact template
(a sentence with an entity slot and a value slot) whose topic, wording, entity names and values appear in no
scoring needle (`tests/test_needlegen.py` checks the text similarity of every template and answer against every
scoring needle, not hashes), and the haystack is prose generated from a small fixed grammar instead of
Python's documentation.

Two splits, `validation` (to tune on) and `test` (to report on), share nothing: their templates, entity pools,
value pools and haystack seeds differ, so a choice tuned on one is measured on independent items.

Why a generated haystack: `pydoc_data.topics` changes with every CPython release and is the scoring haystack;
a text shipped as package data would add size and a licence. The grammar here is a few word pools combined by
picks from SHA-256 of (split, seed, sentence index, slot), so the text is identical on every Python version and
platform (`random`'s `choice`/`shuffle` algorithms are not guaranteed across versions), and it contains no
entity name of either split (checked when building).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from headprof.errors import HeadprofError
from headprof.needlegen import pools as words
from headprof.needlegen.templates import TEMPLATES, Template
from headprof.probes import Needle, Probe, build_probes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TEMPLATES", "Template", "build_eval_probes", "entities", "generate_needles", "haystack", "max_count"]

SPLITS = ("validation", "test")
DEFAULT_COUNT = 40
DEFAULT_LENGTHS = (1024, 4096)
DEFAULT_DEPTHS = (25.0, 75.0)
WORD_SLOTS = ((words.OPENERS, "open"), (words.VERBS, "verb"), (words.TAILS, "tail"))
HAYSTACK_SENTENCES = 900  # about 13 tokens each: room for a 4096-token prompt at least twice over


def _pick(pool: Sequence[str], *key: object) -> str:
    """A deterministic choice from `pool`: SHA-256 of the key, the same on every Python version."""
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return pool[int.from_bytes(digest[:8], "big") % len(pool)]


def _order(n: int, *key: object) -> list[int]:
    """A deterministic permutation of range(n): indices sorted by the SHA-256 of (key, index)."""
    return sorted(range(n), key=lambda i: hashlib.sha256(":".join(map(str, (*key, i))).encode()).digest())


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise HeadprofError(f"unknown split '{split}' ({', '.join(SPLITS)})")


def haystack(split: str, seed: int = 0, n: int = HAYSTACK_SENTENCES) -> list[str]:
    """`n` prose sentences from the fixed grammar, seeded by split and seed: the evaluation haystack."""
    _check_split(split)
    out = []
    for i in range(n):
        shape = int(_pick("0123", split, seed, i, "shape"))
        key = (split, seed, i)
        noun = f"the {_pick(words.ADJECTIVES, *key, 'adj')} {_pick(words.NOUNS, *key, 'noun')}"
        opener, verb, tail = (_pick(pool, *key, slot) for pool, slot in WORD_SLOTS)
        if shape == 0:
            sentence = f"{opener}, {noun} {verb}."
        elif shape == 1:
            sentence = f"{noun[0].upper()}{noun[1:]} {verb} {tail}."
        elif shape == 2:
            sentence = f"{_pick(words.OBSERVERS, *key, 'who')} {_pick(words.REMARKS, *key, 'remark')}."
        else:
            sentence = f"{opener}, {noun} {verb} {tail}."
        out.append(sentence)
    return out


def _plan(split: str, seed: int) -> list[tuple[Template, str, str]]:
    """Every needle a split can make under `seed`, as (template, entity, value), in order: the templates taken in
    turn (a seeded order), each time with a fresh entity and the template's next value (seeded orders too), until
    a template runs out of values or its entity pool runs dry. No needle repeats an entity or a template's value."""
    _check_split(split)
    templates = TEMPLATES[split]
    order = _order(len(templates), split, seed, "templates")
    first = [words.FIRST[split][i] for i in _order(len(words.FIRST[split]), split, seed, "first")]
    last = [words.LAST[split][i] for i in _order(len(words.LAST[split]), split, seed, "last")]
    # person j: first name j mod F, last name shifted by j // F, so first names rotate and no full name repeats
    people = [
        f"{first[j % len(first)]} {last[(j + j // len(first)) % len(last)]}" for j in range(len(first) * len(last))
    ]
    pools = {
        "person": people,
        "place": [words.PLACES[split][i] for i in _order(len(words.PLACES[split]), split, seed, "places")],
    }
    value_orders = [_order(len(t.values), split, seed, "values", t.topic) for t in templates]
    used = {"person": 0, "place": 0}
    plan = []
    for i in range(len(templates) * max(len(t.values) for t in templates)):
        index = order[i % len(templates)]
        template, round_ = templates[index], i // len(templates)
        if round_ >= len(template.values) or used[template.entity] >= len(pools[template.entity]):
            break
        plan.append(
            (template, pools[template.entity][used[template.entity]], template.values[value_orders[index][round_]])
        )
        used[template.entity] += 1
    return plan


def max_count(split: str, seed: int = 0) -> int:
    """How many distinct needles a split can make under `seed` (see `generate_needles`)."""
    return len(_plan(split, seed))


def generate_needles(split: str, count: int = DEFAULT_COUNT, seed: int = 0) -> list[Needle]:
    """`count` retrieval needles of one split, deterministic under `seed`: the templates taken in turn, each time
    with a fresh entity and the template's next value (`_plan`)."""
    plan = _plan(split, seed)
    if not 1 <= count <= len(plan):
        raise HeadprofError(f"`count` must be between 1 and {len(plan)} for the {split} split, got {count}")
    needles = []
    for i, (template, entity, value) in enumerate(plan[:count]):
        text = template.needle.format(e=entity, v=value)
        needles.append(
            Needle(
                id=f"g{split[0]}-{i:03d}-{template.topic}",
                kind="retrieval",
                needle=text,
                question=template.question.format(e=entity),
                answer=value,
                sentence=text,
            )
        )
    return needles


def entities(split: str) -> list[str]:
    """Every entity name a split may use (persons as first and last names, places): for the disjointness checks."""
    _check_split(split)
    return [*words.FIRST[split], *words.LAST[split], *words.PLACES[split]]


def build_eval_probes(
    tokenizer: PreTrainedTokenizerBase,
    split: str = "test",
    count: int = DEFAULT_COUNT,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    seed: int = 0,
    max_context: int = 0,
    tokenizer_name: str = "",
    on_probe: Callable[[Probe], None] | None = None,
) -> list[Probe]:
    """Probes of `count` generated needles of `split` x lengths x depths, in that split's generated haystack.

    The haystack is refused if it names an entity or a value of either split (a distractor next to the needle,
    or one split leaking into the other)."""
    sentences = haystack(split, seed)
    text = " ".join(sentences)
    names = [name for s in SPLITS for name in entities(s)] + [v for s in SPLITS for t in TEMPLATES[s] for v in t.values]
    leaked = sorted({name for name in names if re.search(rf"\b{re.escape(name)}\b", text, re.IGNORECASE)})
    if leaked:
        raise HeadprofError(f"the generated {split} haystack names needle entities or values: {', '.join(leaked)}")
    return build_probes(
        generate_needles(split, count, seed),
        tokenizer,
        lengths,
        depths,
        seed,
        sentences,
        max_context,
        tokenizer_name,
        on_probe,
    )
