"""RULER's task definitions: templates, answer prefixes, needle counts and tokens to generate (NVIDIA/RULER
@ c3f5e3b; "R@c3f5e3b" below names the file whose rule is followed). Generation is `ruler.py`."""

from __future__ import annotations

from dataclasses import dataclass

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
