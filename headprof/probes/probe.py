"""A needle, a probe (one prompt with its character spans) and its token view; a probe set's hashes."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from headprof import validation
from headprof.errors import HeadprofError

KINDS = ("retrieval", "reasoning")
DEFAULT_LENGTHS = (1024,)
DEFAULT_DEPTHS = (10, 50, 90)
DEFAULT_SEED = 0
INSTRUCTION = "Answer briefly, using the exact words from the text."
_MAX_TOKENS = 1 << 24
# Required probe fields and the JSON types each may have (bool is not an int here).
_PROBE_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "needle_id": (str,),
    "kind": (str,),
    "prompt": (str,),
    "templated": (bool,),
    "needle_chars": (list,),
    "sentence_chars": (list,),
    "answer_chars": (list,),
    "question": (str,),
    "answer": (str,),
    "target": (str,),
    "length": (int,),
    "n_tokens": (int,),
    "depth": (int, float),
    "seed": (int,),
}
SPANS = ("answer", "sentence")


@dataclass(frozen=True)
class Needle:
    """One fact to hide: its text, the question, the sentence that answers it and the answer inside that sentence.

    `sentence` is what the model is expected to say (the teacher-forced target, and HeadKV's F1 reference);
    `answer` is the part of it that carries the fact (the Retrieval-head code's scoring span). Reasoning
    needles come in polarity pairs: the same needle text asked both ways (older/younger, ...).
    """

    id: str
    kind: str
    needle: str
    question: str
    answer: str
    sentence: str


@dataclass
class Probe:
    """One prompt with one needle. Character spans index into `prompt`; `target` is the answer sentence as it
    follows the prompt (a leading space after a plain `Answer:`), the teacher-forced answer."""

    id: str
    needle_id: str
    kind: str
    prompt: str
    templated: bool
    needle_chars: tuple[int, int]
    sentence_chars: tuple[int, int]
    answer_chars: tuple[int, int]
    question: str
    answer: str
    target: str
    length: int
    n_tokens: int
    depth: float
    seed: int
    tokenizer: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Probe:
        """Parse one JSONL row; a wrong type, an out-of-range number or span, or a prompt that no longer holds
        the needle's scoring span raises HeadprofError naming the field."""
        if not isinstance(data, dict):
            raise HeadprofError("expected a JSON object")
        data = dict(data)
        if "span_chars" in data and "sentence_chars" not in data:  # probe files before the answer span
            data["sentence_chars"] = data.pop("span_chars")
            data.setdefault("answer_chars", _legacy_answer_chars(data))
        missing = [key for key in _PROBE_TYPES if key not in data]
        if missing:
            raise HeadprofError(f"missing field(s) {', '.join(missing)}")
        for key, kinds in _PROBE_TYPES.items():
            value = data[key]
            if type(value) not in kinds:
                raise HeadprofError(f"field '{key}' must be {' or '.join(k.__name__ for k in kinds)}")
            if isinstance(value, str) and not validation.is_text(value):
                raise HeadprofError(f"field '{key}' holds a lone surrogate, not text")
        if "extra" in data and not isinstance(data["extra"], dict):
            raise HeadprofError("field 'extra' must be an object")
        if "tokenizer" in data and not isinstance(data["tokenizer"], str):
            raise HeadprofError("field 'tokenizer' must be a string")
        for key in ("needle_chars", "sentence_chars", "answer_chars"):
            span = data[key]
            if (
                not isinstance(span, list)
                or len(span) != 2
                or not all(type(x) is int for x in span)
                or not 0 <= span[0] < span[1] <= len(data["prompt"])
            ):
                raise HeadprofError(f"field '{key}' must be [start, end] inside the prompt")
            data[key] = tuple(span)
        if data["kind"] not in KINDS:
            raise HeadprofError(f"kind must be one of {', '.join(KINDS)}")
        if not 1 <= data["length"] <= _MAX_TOKENS or not 1 <= data["n_tokens"] <= data["length"]:
            raise HeadprofError("fields 'length' and 'n_tokens' must satisfy 1 <= n_tokens <= length")
        if not (math.isfinite(data["depth"]) and 0 <= data["depth"] <= 100):
            raise HeadprofError("field 'depth' must be a percent in [0, 100]")
        (n_start, n_end), (s_start, s_end) = data["needle_chars"], data["sentence_chars"]
        a_start, a_end = data["answer_chars"]
        if not n_start <= s_start <= a_start < a_end <= s_end <= n_end:
            raise HeadprofError(
                "fields 'answer_chars' and 'sentence_chars' must lie inside 'needle_chars', in that order"
            )
        if data["prompt"][s_start:s_end] != data["target"].strip():
            raise HeadprofError(
                "the prompt does not hold the answer sentence at 'sentence_chars' (needle text changed or removed)"
            )
        if data["prompt"][a_start:a_end].lower() != data["answer"].lower():
            raise HeadprofError("the prompt does not hold the answer at 'answer_chars'")
        if not data["answer"].strip() or data["answer"].lower() not in data["target"].lower():
            raise HeadprofError("field 'answer' must be non-empty and occur in the target")
        for key in ("id", "needle_id", "question"):
            if not data[key].strip():
                raise HeadprofError(f"field '{key}' must not be empty")
        data["depth"] = float(data["depth"])
        return cls(**data)

    @property
    def position(self) -> str:
        """`<length>@<depth>`: probes at one position share the haystack around the needle."""
        return f"{self.length}@{self.depth:g}"


def _legacy_answer_chars(data: dict[str, Any]) -> list[int]:
    """Older probe files kept only the sentence span: find the gold answer inside it (case-insensitive)."""
    prompt, answer, span = data.get("prompt", ""), data.get("answer", ""), data.get("sentence_chars")
    if not isinstance(span, list) or len(span) != 2 or not all(type(x) is int for x in span):
        raise HeadprofError("field 'span_chars' must be [start, end] inside the prompt")
    offset = prompt[span[0] : span[1]].lower().find(str(answer).lower())
    if not answer or offset < 0:
        raise HeadprofError("the answer does not occur in the span")
    return [span[0] + offset, span[0] + offset + len(answer)]


@dataclass(frozen=True)
class EncodedProbe:
    """Token view of a probe. `spans` (answer, sentence) and `needle` are half-open token ranges inside
    `prompt_ids`; `target_ids` are the target's tokens as they follow the prompt; `answer_steps` is the
    range of target steps that produce the answer. `prompt_keys`/`target_keys` are the tokens' strings
    without a leading space marker, what the copy check compares (see `copy_keys`)."""

    probe: Probe
    prompt_ids: list[int]
    target_ids: list[int]
    spans: dict[str, tuple[int, int]]
    needle: tuple[int, int]
    answer_steps: tuple[int, int]
    prompt_keys: list[str]
    target_keys: list[str]

    def span(self, which: str = "answer") -> tuple[int, int]:
        """The scoring span: `answer` (the answer inside the sentence) or `sentence` (the whole sentence)."""
        if which not in self.spans:
            raise HeadprofError(f"unknown scoring span '{which}' ({', '.join(SPANS)})")
        return self.spans[which]


def needle_key(probe: Probe) -> str:
    """Short hash of the probe's needle text: probes with one key are one needle (a reasoning needle's two
    polarities share it), the unit that split halves and bootstraps resample and evaluation keeps apart."""
    return hashlib.sha256(probe.prompt[slice(*probe.needle_chars)].encode()).hexdigest()[:16]


def probes_sha256(probes: Sequence[Probe]) -> str:
    """Content hash of a probe set, independent of file formatting and order."""
    rows = sorted(json.dumps(asdict(p), sort_keys=True, ensure_ascii=False) for p in probes)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()
