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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headprof.errors import HeadprofError
from headprof.probes import Needle, Probe, build_probes

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPLITS = ("validation", "test")
DEFAULT_COUNT = 40
DEFAULT_LENGTHS = (1024, 4096)
DEFAULT_DEPTHS = (25.0, 75.0)
HAYSTACK_SENTENCES = 900  # about 13 tokens each: room for a 4096-token prompt at least twice over


@dataclass(frozen=True)
class Template:
    """A fact with an entity slot (`{e}`, a person or a place) and a value slot (`{v}`); `values` are the
    answers it may carry. The answer is the value; the needle is the whole sentence."""

    topic: str
    needle: str
    question: str
    entity: str  # "person" or "place"
    values: tuple[str, ...]


def _t(topic: str, needle: str, question: str, entity: str, values: str) -> Template:
    return Template(topic, needle, question, entity, tuple(v.strip() for v in values.split(",")))


# Topics, names and values chosen to appear in no scoring needle (codes, passwords, keys, colours, dishes,
# instruments, ships, pets, ages, heights... are the scoring needles' topics, and stay out).
TEMPLATES: dict[str, tuple[Template, ...]] = {
    "test": (
        _t(
            "job",
            "{e} works as a {v} in the old quarter of town.",
            "What does {e} work as?",
            "person",
            "glassblower, bookbinder, ropemaker, cartographer, locksmith",
        ),
        _t(
            "tree",
            "In the back garden, {e} planted a young {v} tree.",
            "What kind of tree did {e} plant in the back garden?",
            "person",
            "walnut, medlar, hornbeam, mulberry, rowan",
        ),
        _t(
            "month",
            "{e} was born in the month of {v}.",
            "In which month was {e} born?",
            "person",
            "February, April, August, November, January",
        ),
        _t(
            "sport",
            "Every Saturday morning {e} goes {v} with two cousins.",
            "What does {e} go and do every Saturday morning?",
            "person",
            "fencing, rowing, archery, bouldering, orienteering",
        ),
        _t(
            "language",
            "{e} learned to speak {v} while living abroad.",
            "Which language did {e} learn while living abroad?",
            "person",
            "Icelandic, Portuguese, Swahili, Hungarian, Tagalog",
        ),
        _t(
            "sisters",
            "{e} has exactly {v} older sisters.",
            "How many older sisters does {e} have?",
            "person",
            "twelve, six, eight, nine, eleven",
        ),
        _t(
            "street",
            "The shop that {e} runs stands on {v} Street.",
            "On which street does the shop that {e} runs stand?",
            "person",
            "Larkspur, Foxglove, Bellflower, Primrose, Yarrow",
        ),
        _t(
            "subject",
            "{e} studied {v} at university before becoming a teacher.",
            "What did {e} study at university before becoming a teacher?",
            "person",
            "geology, linguistics, botany, economics, astronomy",
        ),
        _t(
            "collection",
            "{e} collects old {v} from flea markets.",
            "What does {e} collect from flea markets?",
            "person",
            "typewriters, barometers, postcards, kaleidoscopes, pocket watches",
        ),
        _t(
            "mural",
            "On the kitchen wall, {e} painted a mural of {v}.",
            "What did {e} paint a mural of on the kitchen wall?",
            "person",
            "a giraffe, a volcano, an octopus, a zeppelin, a peacock",
        ),
        _t(
            "spouse",
            "{e} married a {v} from the next valley.",
            "Whom did {e} marry from the next valley?",
            "person",
            "shepherd, miller, potter, weaver, farrier",
        ),
        _t(
            "festival",
            "The harvest festival in {e} is held on the {v} of October.",
            "On which day of October is the harvest festival in {e} held?",
            "place",
            "third, ninth, twelfth, seventeenth, twentieth",
        ),
        _t(
            "river",
            "The river that runs through {e} is called the {v}.",
            "What is the river that runs through {e} called?",
            "place",
            "Ellisande, Torvald, Quimsey, Harbrook, Nessaway",
        ),
        _t(
            "population",
            "The village of {e} has a population of {v} people.",
            "What is the population of the village of {e}?",
            "place",
            "2817, 6390, 1146, 9072, 3458",
        ),
        _t(
            "market",
            "The weekly market in {e} takes place on {v}.",
            "On which day does the weekly market in {e} take place?",
            "place",
            "Monday, Tuesday, Wednesday, Friday, Sunday",
        ),
        _t(
            "hospital",
            "The nearest hospital to {e} is in the town of {v}.",
            "In which town is the nearest hospital to {e}?",
            "place",
            "Carrowmede, Islingham, Pentreath, Suddaby, Wrexholm",
        ),
    ),
    "validation": (
        _t(
            "postmaster",
            "The postmaster of {e} used to be a {v}.",
            "What did the postmaster of {e} use to be?",
            "place",
            "surgeon, tailor, stonemason, jockey, chemist",
        ),
        _t(
            "vehicle",
            "{e} drives a rusty {v} to the coast every summer.",
            "What does {e} drive to the coast every summer?",
            "person",
            "tractor, camper van, motorbike, jeep, minibus",
        ),
        _t(
            "country",
            "The grandmother of {e} came from {v}.",
            "Which country did the grandmother of {e} come from?",
            "person",
            "Estonia, Chile, Morocco, Norway, Vietnam",
        ),
        _t(
            "pillow",
            "{e} sleeps with a {v} under the pillow.",
            "What does {e} sleep with under the pillow?",
            "person",
            "river pebble, pine cone, seashell, conker, feather",
        ),
        _t(
            "bakery",
            "The bakery in {e} opens its doors at {v} every morning.",
            "At what time does the bakery in {e} open its doors every morning?",
            "place",
            "5:40, 6:15, 4:50, 7:05, 5:25",
        ),
        _t(
            "marathon",
            "{e} is training to run a marathon in {v}.",
            "In which city is {e} training to run a marathon?",
            "person",
            "Lisbon, Kyoto, Montreal, Nairobi, Seville",
        ),
        _t(
            "pupils",
            "The school in {e} has exactly {v} pupils this year.",
            "How many pupils does the school in {e} have this year?",
            "place",
            "143, 268, 87, 312, 59",
        ),
        _t(
            "repair",
            "{e} spent last winter repairing an old {v}.",
            "What did {e} spend last winter repairing?",
            "person",
            "grandfather clock, printing press, spinning wheel, carousel, rowing boat",
        ),
        _t(
            "mountain",
            "The mountain north of {e} is called {v} Peak.",
            "What is the mountain north of {e} called?",
            "place",
            "Ardanmore, Corrievale, Scarrow, Benlough, Cairnhope",
        ),
        _t(
            "fear",
            "{e} is afraid of {v}.",
            "What is {e} afraid of?",
            "person",
            "thunderstorms, moths, escalators, ladders, revolving doors",
        ),
        _t(
            "windows",
            "The town hall of {e} has {v} windows facing the square.",
            "How many windows of the town hall of {e} face the square?",
            "place",
            "36, 53, 17, 44, 27",
        ),
        _t(
            "daughter",
            "{e} named the eldest daughter {v}.",
            "What did {e} name the eldest daughter?",
            "person",
            "Rosalba, Yvaine, Marisol, Thandie, Perpetua",
        ),
        _t(
            "prize",
            "{e} once won a prize for growing a giant {v}.",
            "What did {e} once win a prize for growing?",
            "person",
            "pumpkin, marrow, cabbage, turnip, sunflower",
        ),
        _t(
            "wool",
            "The wool from {e} is dyed with {v}.",
            "What is the wool from {e} dyed with?",
            "place",
            "madder root, woad, onion skins, walnut husks, weld",
        ),
        _t(
            "bees",
            "{e} keeps bees on the roof of the {v}.",
            "On the roof of which building does {e} keep bees?",
            "person",
            "library, fire station, cinema, post office, railway station",
        ),
        _t(
            "race",
            "The annual boat race in {e} was won by a team from {v}.",
            "A team from where won the annual boat race in {e}?",
            "place",
            "Gastonbury, Lowick Ferry, Ramsholt, Draycombe, Upwater",
        ),
    ),
}

# Entity pools per split: full names (first x last, each pair used once) and places.
_FIRST = {
    "test": ("Amara", "Benedek", "Corisande", "Dmitri", "Elowen", "Faustine", "Gideon", "Hyacinth", "Ivo", "Jessamy"),
    "validation": (
        "Aurelie",
        "Bastien",
        "Calloway",
        "Delphine",
        "Emrys",
        "Florian",
        "Gwendolyn",
        "Hamish",
        "Isolde",
        "Jago",
    ),
}
_LAST = {
    "test": ("Achterberg", "Bellweather", "Crane", "Dallimore", "Esterhazy", "Fairbairn", "Goodchild", "Hesketh"),
    "validation": (
        "Abernathy",
        "Blackwood",
        "Coppersmith",
        "Devereux",
        "Eastwick",
        "Fitzwarren",
        "Greenhalgh",
        "Holloway",
    ),
}
_PLACES = {
    "test": (
        "Ambleside Cross",
        "Brackenholt",
        "Cawsand Vale",
        "Dunkerrow",
        "Eskmouth",
        "Frampton Lees",
        "Glenmarrick",
        "Hollowmere",
        "Kinvarra",
        "Lowther Green",
        "Millbeck",
        "Northallow",
        "Oakhampstead",
        "Pennick",
        "Rothwick",
        "Stanbury Water",
        "Thistlecombe",
        "Wardleigh",
        "Ulverby",
        "Vennacott",
        "Whitlingham",
        "Yewbarrow",
        "Zennor Reach",
        "Coverdale End",
    ),
    "validation": (
        "Aldwick",
        "Burntisland Row",
        "Coldharbour",
        "Dunmerrin",
        "Elsworth",
        "Foxhollow",
        "Grimsby Knoll",
        "Hartlepool Mead",
        "Inverlochy",
        "Kestrel Bay",
        "Longridge",
        "Moorcastle",
        "Newlyn Cross",
        "Oxenhope",
        "Pitlochry Hill",
        "Ravenglass",
        "Sallowfield",
        "Tinworth",
        "Quarrydown",
        "Ryecombe",
        "Stowmarsh",
        "Wickhambrook",
        "Yarlside",
        "Beckfoot",
        "Crowlas",
        "Dellingham",
    ),
}

# The haystack grammar: everyday prose about weather, roads and seasons, none of the entity names.
_OPENERS = (
    "In the early spring",
    "By most accounts",
    "Along the northern road",
    "After the long rains",
    "Late in the afternoon",
    "For many years",
    "On the far side of the hills",
    "Before the first frost",
    "During the dry months",
    "At the edge of the moor",
    "Every few weeks",
    "Once the fields were cut",
)
_ADJECTIVES = (
    "narrow",
    "quiet",
    "muddy",
    "broad",
    "steep",
    "sunlit",
    "windy",
    "grey",
    "patient",
    "weathered",
    "crowded",
    "distant",
    "gentle",
    "heavy",
    "empty",
    "familiar",
)
_NOUNS = (
    "lane",
    "meadow",
    "orchard",
    "cart",
    "hedge",
    "ditch",
    "barn",
    "stream",
    "footpath",
    "wagon",
    "pasture",
    "stone wall",
    "ferry landing",
    "sheep fold",
    "chapel",
    "granary",
)
_VERBS = (
    "was repaired by the farmers",
    "stood half hidden in the mist",
    "filled slowly with water",
    "drew travellers from the nearby villages",
    "was mentioned in the old survey",
    "lay empty for a season",
    "needed a new fence",
    "caught the last of the light",
    "was cleared after the storm",
    "became a resting place for walkers",
    "gave shelter to the cattle",
    "was measured again by the surveyors",
)
_TAILS = (
    "and nobody seemed to mind",
    "while the wind turned to the east",
    "as the carters had always said",
    "though the records are unclear",
    "before anyone thought to write it down",
    "and the work took several days",
    "as it does in most years",
    "which surprised the older neighbours",
    "until the weather changed again",
    "and the road was quiet for a while",
)
_OBSERVERS = (
    "The carters",
    "Local walkers",
    "The older neighbours",
    "Visiting surveyors",
    "The parish clerk",
    "Travelling pedlars",
    "The drovers",
    "Most of the farmers",
)
_REMARKS = (
    "say the winters there are long",
    "remember the floods of a dry summer",
    "prefer the lower road in winter",
    "count the milestones out loud",
    "talk about the harvest more than the weather",
    "keep a lantern by the door",
    "walk the long way round the marsh",
    "trust the old maps more than the new",
)


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
        noun = f"the {_pick(_ADJECTIVES, *key, 'adj')} {_pick(_NOUNS, *key, 'noun')}"
        if shape == 0:
            sentence = f"{_pick(_OPENERS, *key, 'open')}, {noun} {_pick(_VERBS, *key, 'verb')}."
        elif shape == 1:
            sentence = f"{noun[0].upper()}{noun[1:]} {_pick(_VERBS, *key, 'verb')} {_pick(_TAILS, *key, 'tail')}."
        elif shape == 2:
            sentence = f"{_pick(_OBSERVERS, *key, 'who')} {_pick(_REMARKS, *key, 'remark')}."
        else:
            sentence = (
                f"{_pick(_OPENERS, *key, 'open')}, {noun} {_pick(_VERBS, *key, 'verb')} {_pick(_TAILS, *key, 'tail')}."
            )
        out.append(sentence)
    return out


def _plan(split: str, seed: int) -> list[tuple[Template, str, str]]:
    """Every needle a split can make under `seed`, as (template, entity, value), in order: the templates taken in
    turn (a seeded order), each time with a fresh entity and the template's next value (seeded orders too), until
    a template runs out of values or its entity pool runs dry. No needle repeats an entity or a template's value."""
    _check_split(split)
    templates = TEMPLATES[split]
    order = _order(len(templates), split, seed, "templates")
    first = [_FIRST[split][i] for i in _order(len(_FIRST[split]), split, seed, "first")]
    last = [_LAST[split][i] for i in _order(len(_LAST[split]), split, seed, "last")]
    # person j: first name j mod F, last name shifted by j // F, so first names rotate and no full name repeats
    people = [
        f"{first[j % len(first)]} {last[(j + j // len(first)) % len(last)]}" for j in range(len(first) * len(last))
    ]
    pools = {
        "person": people,
        "place": [_PLACES[split][i] for i in _order(len(_PLACES[split]), split, seed, "places")],
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
        raise HeadprofError(f"--count must be between 1 and {len(plan)} for the {split} split, got {count}")
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
    return [*_FIRST[split], *_LAST[split], *_PLACES[split]]


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
