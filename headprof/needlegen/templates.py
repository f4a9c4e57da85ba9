"""The fact templates of the generated evaluation needles, per split (see `headprof.needlegen`)."""

from __future__ import annotations

from dataclasses import dataclass


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
