"""Needle-in-a-haystack probes: needle files, the haystack, building probes and locating spans in tokens.

A probe file is JSONL (one probe a line, loadable with `datasets.load_dataset("json", ...)`). Each
probe carries its full prompt text and character spans (the needle, the sentence that answers the
question, and the answer inside that sentence), so that scoring never has to rebuild the prompt; the
spans are mapped to token ids with the tokenizer's offset mapping at scoring time.

Probes of one length share one haystack order: at a given (length, depth) every needle is preceded by
the same text, and a shallower depth's prefix is a prefix of a deeper one's, so a scorer can compute
that prefix's KV once.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headprof import validation
from headprof.errors import HeadprofError
from headprof.fileio import atomic_path, jsonl_line, read_lines
from headprof.models.spec import resolve_model

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase

KINDS = ("retrieval", "reasoning")
DEFAULT_LENGTHS = (1024,)
DEFAULT_DEPTHS = (10, 50, 90)
DEFAULT_SEED = 0
INSTRUCTION = "Answer briefly, using the exact words from the text."
_NEEDLE_FIELDS = ("needle", "question", "answer", "kind")
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
# Token-string markers of a leading space (byte-level BPE, SentencePiece), for the copy check.
_SPACE_MARKERS = ("\u0120", "\u2581", " ")


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
        the needle's scoring span raises ValueError naming the field."""
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        data = dict(data)
        if "span_chars" in data and "sentence_chars" not in data:  # probe files before the answer span
            data["sentence_chars"] = data.pop("span_chars")
            data.setdefault("answer_chars", _legacy_answer_chars(data))
        missing = [key for key in _PROBE_TYPES if key not in data]
        if missing:
            raise ValueError(f"missing field(s) {', '.join(missing)}")
        for key, kinds in _PROBE_TYPES.items():
            value = data[key]
            if type(value) not in kinds:
                raise ValueError(f"field '{key}' must be {' or '.join(k.__name__ for k in kinds)}")
            if isinstance(value, str) and not validation.is_text(value):
                raise ValueError(f"field '{key}' holds a lone surrogate, not text")
        if "extra" in data and not isinstance(data["extra"], dict):
            raise ValueError("field 'extra' must be an object")
        if "tokenizer" in data and not isinstance(data["tokenizer"], str):
            raise ValueError("field 'tokenizer' must be a string")
        for key in ("needle_chars", "sentence_chars", "answer_chars"):
            span = data[key]
            if (
                not isinstance(span, list)
                or len(span) != 2
                or not all(type(x) is int for x in span)
                or not 0 <= span[0] < span[1] <= len(data["prompt"])
            ):
                raise ValueError(f"field '{key}' must be [start, end] inside the prompt")
            data[key] = tuple(span)
        if data["kind"] not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        if not 1 <= data["length"] <= _MAX_TOKENS or not 1 <= data["n_tokens"] <= data["length"]:
            raise ValueError("fields 'length' and 'n_tokens' must satisfy 1 <= n_tokens <= length")
        if not (math.isfinite(data["depth"]) and 0 <= data["depth"] <= 100):
            raise ValueError("field 'depth' must be a percent in [0, 100]")
        (n_start, n_end), (s_start, s_end) = data["needle_chars"], data["sentence_chars"]
        a_start, a_end = data["answer_chars"]
        if not n_start <= s_start <= a_start < a_end <= s_end <= n_end:
            raise ValueError("fields 'answer_chars' and 'sentence_chars' must lie inside 'needle_chars', in that order")
        if data["prompt"][s_start:s_end] != data["target"].strip():
            raise ValueError(
                "the prompt does not hold the answer sentence at 'sentence_chars' (needle text changed or removed)"
            )
        if data["prompt"][a_start:a_end].lower() != data["answer"].lower():
            raise ValueError("the prompt does not hold the answer at 'answer_chars'")
        if not data["answer"].strip() or data["answer"].lower() not in data["target"].lower():
            raise ValueError("field 'answer' must be non-empty and occur in the target")
        for key in ("id", "needle_id", "question"):
            if not data[key].strip():
                raise ValueError(f"field '{key}' must not be empty")
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
        raise ValueError("field 'span_chars' must be [start, end] inside the prompt")
    offset = prompt[span[0] : span[1]].lower().find(str(answer).lower())
    if not answer or offset < 0:
        raise ValueError("the answer does not occur in the span")
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


# ---------------------------------------------------------------- needles


def load_needles(path: str | Path, kind: str | None = None) -> list[Needle]:
    """Read and validate a needle JSONL file; every problem names the file and line."""
    path = Path(path)
    needles: list[Needle] = []
    seen: set[str] = set()
    for lineno, line in enumerate(read_lines(path, "needle file"), 1):
        if not line.strip():
            continue
        where = f"needle file {path} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HeadprofError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise HeadprofError(f"{where}: expected a JSON object")
        for key in _NEEDLE_FIELDS:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise HeadprofError(f"{where}: missing or empty field '{key}'")
        if row["kind"] not in KINDS:
            raise HeadprofError(f"{where}: kind must be one of {', '.join(KINDS)}, got '{row['kind']}'")
        sentence = row.get("sentence", row.get("span")) or row["needle"]  # `span`: the field's older name
        if not isinstance(sentence, str):
            raise HeadprofError(f"{where}: field 'sentence' must be a string")
        sentence, answer = sentence.strip(), row["answer"].strip()
        if row["needle"].count(sentence) != 1:
            raise HeadprofError(f"{where}: the sentence must occur exactly once in the needle")
        if answer.lower() not in sentence.lower():
            raise HeadprofError(f"{where}: answer '{answer}' does not occur in the sentence")
        needle_id = str(row.get("id") or f"{path.stem}-{lineno}")
        if needle_id in seen:
            raise HeadprofError(f"{where}: duplicate needle id '{needle_id}'")
        seen.add(needle_id)
        needles.append(Needle(needle_id, row["kind"], row["needle"].strip(), row["question"].strip(), answer, sentence))
    if not needles:
        raise HeadprofError(f"needle file {path} has no needles")
    if kind is not None:
        needles = [n for n in needles if n.kind == kind]
    return needles


def select_needles(files: Sequence[str | Path], kinds: Sequence[str]) -> list[Needle]:
    """The needles of the given kinds from several files; none at all is an error naming the files."""
    needles = [n for f in files for n in load_needles(f) if n.kind in kinds]
    if not needles:
        raise HeadprofError(f"no {' or '.join(kinds)} needles in {', '.join(map(str, files))}")
    return needles


# ---------------------------------------------------------------- haystack

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _is_prose(paragraph: str) -> bool:
    """Keep explanatory prose; drop code samples, tables, headings and grammar rules."""
    if ">>>" in paragraph or "::=" in paragraph or len(paragraph.split()) < 8:
        return False
    lines = paragraph.splitlines()
    if any(re.fullmatch(r"\s*([*=~^-])\1{3,}\s*", line) for line in lines):
        return False
    letters = sum(ch.isalpha() or ch.isspace() for ch in paragraph)
    return letters / len(paragraph) > 0.9 and "." in paragraph


def clean_haystack(raw: str) -> list[str]:
    """Split raw text into prose sentences (code and markup removed)."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", raw):
        if not _is_prose(paragraph):
            continue
        text = re.sub(r"\s+", " ", re.sub(r"[*`\"]", "", paragraph)).strip()
        for sentence in _SENTENCE_END.split(text):
            if len(sentence.split()) >= 4 and sentence[-1] in ".!?":
                sentences.append(sentence)
    return sentences


def _regular(path: Path) -> bool:
    """A regular file of a haystack folder (a pipe or a link to a device would hang the read: skipped)."""
    try:
        validation.input_file(path, "haystack file")
    except HeadprofError:
        return False
    return True


def _is_text(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return b"\0" not in fh.read(4096)
    except OSError:
        return False


def load_haystack(source: str = "builtin") -> list[str]:
    """`builtin`: the English documentation text that ships with CPython (no download); else a file or folder."""
    if source == "builtin":
        from pydoc_data.topics import topics

        raw = "\n\n".join(topics[key] for key in sorted(topics))
        origin = "builtin haystack (pydoc_data.topics)"
    else:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if _regular(p) and _is_text(p))
            if not files:
                raise HeadprofError(f"haystack folder {path} has no text files")
        else:
            files = [validation.input_file(path, "haystack")]
        try:
            raw = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
        except OSError as exc:
            raise HeadprofError(f"cannot read haystack {path}: {exc.strerror}") from None
        origin = f"haystack {path}"
    sentences = clean_haystack(raw)
    if len(sentences) < 20:
        raise HeadprofError(f"{origin} is empty or too short after cleaning ({len(sentences)} prose sentences)")
    return sentences


# ---------------------------------------------------------------- prompts


def render_prompt(tokenizer: PreTrainedTokenizerBase, context: str, question: str) -> tuple[str, bool]:
    """The model's chat template when it has one, plain text otherwise; returns (prompt, templated)."""
    user = f"{context}\n\nQuestion: {question}\n{INSTRUCTION}"
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return prompt, True
    return f"{user}\nAnswer:", False


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, templated: bool, offsets: bool = False) -> BatchEncoding:
    """Templated prompts already contain their special tokens; plain prompts get the tokenizer's (BOS)."""
    return tokenizer(text, add_special_tokens=not templated, return_offsets_mapping=offsets)


def _stable_rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _count(tokenizer: PreTrainedTokenizerBase, prompt: str, templated: bool) -> int:
    return len(encode_text(tokenizer, prompt, templated)["input_ids"])


def _make_probe(
    needle: Needle,
    tokenizer: PreTrainedTokenizerBase,
    hay: Sequence[str],
    cut: int,
    length: int,
    depth: float,
    seed: int,
) -> Probe:
    """The probe with `needle` after the first `cut` haystack sentences; its prompt may exceed `length`."""
    context = " ".join([*hay[:cut], needle.needle, *hay[cut:]])
    prompt, templated = render_prompt(tokenizer, context, needle.question)
    probe_id = f"{needle.id}@{length}@{depth:g}"
    if prompt.count(needle.needle) != 1:
        raise HeadprofError(
            f"probe {probe_id}: the needle text occurs {prompt.count(needle.needle)} times "
            "in the prompt (the template changed it, or the haystack contains it)"
        )
    n_start = prompt.index(needle.needle)
    s_start = n_start + needle.needle.index(needle.sentence)
    a_start = s_start + needle.sentence.lower().index(needle.answer.lower())
    return Probe(
        id=probe_id,
        needle_id=needle.id,
        kind=needle.kind,
        prompt=prompt,
        templated=templated,
        needle_chars=(n_start, n_start + len(needle.needle)),
        sentence_chars=(s_start, s_start + len(needle.sentence)),
        answer_chars=(a_start, a_start + len(needle.answer)),
        question=needle.question,
        answer=needle.answer,
        target=needle.sentence if templated else " " + needle.sentence,
        length=length,
        n_tokens=_count(tokenizer, prompt, templated),
        depth=float(depth),
        seed=seed,
    )


def _probes_at_length(
    needles: Sequence[Needle],
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[str],
    sentence_tokens: Sequence[int],
    length: int,
    depths: Sequence[float],
    seed: int,
) -> list[Probe]:
    """Every needle x depth at one length, all on one haystack: the same sentences in the same order.

    The haystack is sized for the longest needle + question, so no probe needs trimming and the text
    before the needle is identical for every needle at a depth (and a prefix of the deeper depths').
    Per-sentence token counts only approximate the joined text: if a prompt still overflows, the
    haystack is shortened for all needles at once and the depths recomputed.
    """
    overheads = [_count(tokenizer, *render_prompt(tokenizer, n.needle, n.question)) for n in needles]
    widest = max(range(len(needles)), key=overheads.__getitem__)
    if overheads[widest] >= length:
        raise HeadprofError(
            f"probe {needles[widest].id}@{length}@{depths[0]:g}: the needle and question alone take "
            f"{overheads[widest]} tokens, more than the context length {length}"
        )
    start = _stable_rng(seed, length).randrange(len(sentences))  # 50 and 50.0 must give the same probe
    order = [(start + i) % len(sentences) for i in range(len(sentences))]
    budget = length - overheads[widest]
    while True:
        chosen: list[int] = []
        total = 0
        for idx in order:
            if total + sentence_tokens[idx] > budget:
                break
            chosen.append(idx)
            total += sentence_tokens[idx]
        hay = [sentences[i] for i in chosen]
        counts = [sentence_tokens[i] for i in chosen]
        probes = [
            _make_probe(needle, tokenizer, hay, _depth_index(counts, depth), length, depth, seed)
            for depth in depths
            for needle in needles
        ]
        excess = max(p.n_tokens for p in probes) - length
        if excess <= 0 or not chosen:
            break
        budget -= excess
    shortest = min(p.n_tokens for p in probes)
    if shortest < 0.5 * length:  # a haystack too short for this length
        raise HeadprofError(
            f"probe {probes[0].id}: the haystack fills only {shortest} of {length} tokens "
            "(give a longer haystack or smaller --lengths)"
        )
    return probes


def _depth_index(token_counts: Sequence[int], depth: float) -> int:
    """Sentence boundary whose token offset is closest to depth% of the haystack."""
    total = sum(token_counts)
    goal = total * depth / 100.0
    best, acc, best_gap = 0, 0, abs(goal)
    for i, count in enumerate(token_counts, 1):
        acc += count
        if abs(acc - goal) < best_gap:
            best, best_gap = i, abs(acc - goal)
    return best


def check_grid(lengths: Sequence[int], depths: Sequence[float], max_context: int = 0) -> None:
    """Lengths positive (within the model's window when known), depths percents, neither empty nor repeated."""
    for length in lengths:
        if length <= 0:
            raise HeadprofError(f"context length must be positive, got {length}")
        if max_context and length > max_context:
            raise HeadprofError(f"context length {length} exceeds the model's context window ({max_context} tokens)")
    for depth in depths:
        if not 0 <= depth <= 100:
            raise HeadprofError(f"depth must be a percent in [0, 100], got {depth}")
    if not lengths or not depths:
        raise HeadprofError("need at least one context length and one depth")
    if len(set(lengths)) != len(lengths) or len({float(d) for d in depths}) != len(depths):
        raise HeadprofError("repeated context lengths or depths would build the same probe twice")


def build_probes(
    needles: Iterable[Needle],
    tokenizer: PreTrainedTokenizerBase,
    lengths: Sequence[int] = DEFAULT_LENGTHS,
    depths: Sequence[float] = DEFAULT_DEPTHS,
    seed: int = DEFAULT_SEED,
    haystack: str | Sequence[str] = "builtin",
    max_context: int = 0,
    tokenizer_name: str = "",
    on_probe: Callable[[Probe], None] | None = None,
) -> list[Probe]:
    """Every needle x length x depth (in that order), deterministic under `seed`; one haystack per length
    (`haystack`: a source for `load_haystack`, or the sentences themselves); `on_probe` sees each probe as it
    is built."""
    needles = list(needles)
    if not needles:
        raise HeadprofError("no needles to build probes from")
    check_grid(lengths, depths, max_context)
    if len({n.id for n in needles}) != len(needles):
        raise HeadprofError("needle ids must be unique across the needle files")
    sentences = load_haystack(haystack) if isinstance(haystack, str) else list(haystack)
    sentence_tokens = [len(ids) for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"]]
    built: dict[str, Probe] = {}
    for length in lengths:
        for probe in _probes_at_length(needles, tokenizer, sentences, sentence_tokens, length, depths, seed):
            built[probe.id] = probe
            if on_probe is not None:
                on_probe(probe)
    return [
        replace(built[f"{n.id}@{length}@{float(depth):g}"], tokenizer=tokenizer_name)
        for n in needles
        for length in lengths
        for depth in depths
    ]


# ---------------------------------------------------------------- files


def write_probes(path: str | Path, probes: Sequence[Probe]) -> None:
    """Write probes as JSONL (sorted keys, one per line), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for probe in probes:
                fh.write(jsonl_line(asdict(probe), sort_keys=True))


def load_probes(path: str | Path) -> list[Probe]:
    """Read and validate a probe file; every problem names the file and line."""
    path = Path(path)
    probes: list[Probe] = []
    for lineno, line in enumerate(read_lines(path, "probe file", " (build one with: headprof probes build)"), 1):
        if not line.strip():
            continue
        try:
            probes.append(Probe.from_dict(json.loads(line)))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise HeadprofError(f"probe file {path} line {lineno} is corrupt: {exc}") from None
    if not probes:
        raise HeadprofError(f"probe file {path} has no probes")
    if len({p.id for p in probes}) != len(probes):
        raise HeadprofError(f"probe file {path} has duplicate probe ids")
    return probes


def foreign_tokenizers(probes: Sequence[Probe], model: str) -> list[str]:
    """The tokenizers (other than `model`'s) the probes were built with: their lengths and template are those."""

    def model_id(name: str) -> str:
        try:
            return resolve_model(name).model_id
        except HeadprofError:
            return name

    mine = model_id(model)
    return sorted({p.tokenizer for p in probes if p.tokenizer and model_id(p.tokenizer) != mine})


def needle_key(probe: Probe) -> str:
    """Short hash of the probe's needle text: probes with one key are one needle (a reasoning needle's two
    polarities share it), the unit that split halves and bootstraps resample and evaluation keeps apart."""
    return hashlib.sha256(probe.prompt[slice(*probe.needle_chars)].encode()).hexdigest()[:16]


def probes_sha256(probes: Sequence[Probe]) -> str:
    """Content hash of a probe set, independent of file formatting and order."""
    rows = sorted(json.dumps(asdict(p), sort_keys=True, ensure_ascii=False) for p in probes)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


# ---------------------------------------------------------------- token spans


def char_span_to_tokens(offsets: Sequence[tuple[int, int]], chars: tuple[int, int]) -> tuple[int, int] | None:
    """Half-open token range of the tokens whose characters overlap `chars` (special tokens have empty offsets)."""
    start, end = chars
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not hits:
        return None
    return hits[0], hits[-1] + 1


def context_span(tokenizer: PreTrainedTokenizerBase, prompt: str, question: str) -> tuple[int, int] | None:
    """Where the context sits in a prompt rendered with this tokenizer's template (None: another template)."""
    marker = "\u2063HEADPROF\u2063"
    head, tail = render_prompt(tokenizer, marker, question)[0].split(marker)
    if not (prompt.startswith(head) and prompt.endswith(tail)) or len(head) + len(tail) > len(prompt):
        return None
    return len(head), len(prompt) - len(tail)


def check_needle_in_context(tokenizer: PreTrainedTokenizerBase, probe: Probe, needle_ids: Sequence[int]) -> None:
    """The needle must be user text: no special token inside it, and, for a prompt in this tokenizer's
    template, inside the context (a span on template tokens would score the template, not retrieval)."""
    special = set(tokenizer.all_special_ids) | {
        i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(tok, "special", False)
    }
    if special & set(needle_ids):
        raise HeadprofError(f"probe {probe.id}: the needle span covers template (special) tokens")
    context = context_span(tokenizer, probe.prompt, probe.question)
    if context is not None and not context[0] <= probe.needle_chars[0] < probe.needle_chars[1] <= context[1]:
        raise HeadprofError(f"probe {probe.id}: the needle span lies on the prompt template, not in the context")


def copy_keys(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[str]:
    """Token strings without one leading space marker: what the retrieval copy check compares.

    The Retrieval-head code compares raw ids (`inp == prompt_ids[i]`, retrieval_head_detection.py,
    nightdessert/Retrieval_Head@3ac171a). Its prompts end in "Answer:", so an answer word carries the
    same leading space as in the needle. After a chat template's newline the first word carries none
    ("The" vs the needle's " The"): ignoring one leading space marker keeps the reference's meaning (the
    same word was copied) and equals the raw-id rule whenever both or neither token has the space.
    """
    keys = []
    for token in tokenizer.convert_ids_to_tokens(list(ids)):
        token = str(token)
        keys.append(token[1:] if len(token) > 1 and token[0] in _SPACE_MARKERS else token)
    return keys


def _target_ids(tokenizer: PreTrainedTokenizerBase, probe: Probe, prompt_ids: list[int]) -> tuple[list[int], Any]:
    """The target's tokens as they follow the prompt (tokenized together), with their offsets."""
    enc = encode_text(tokenizer, probe.prompt + probe.target, probe.templated, offsets=True)
    ids = list(enc["input_ids"])
    if ids[: len(prompt_ids)] != prompt_ids:
        raise HeadprofError(f"probe {probe.id}: the answer merges with the prompt's last token; cannot split them")
    return ids[len(prompt_ids) :], enc["offset_mapping"][len(prompt_ids) :]


def encode_probe(tokenizer: PreTrainedTokenizerBase, probe: Probe) -> EncodedProbe:
    """Tokenize the prompt and map the needle, sentence and answer to token ranges, exactly, from offsets."""
    enc = encode_text(tokenizer, probe.prompt, probe.templated, offsets=True)
    prompt_ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    spans = {}
    for name, chars in (("answer", probe.answer_chars), ("sentence", probe.sentence_chars)):
        span = char_span_to_tokens(offsets, chars)
        if span is None:
            raise HeadprofError(f"probe {probe.id}: scoring span {chars} not found in the tokenized prompt")
        covered = (offsets[span[0]][0], offsets[span[1] - 1][1])
        if covered[0] > chars[0] or covered[1] < chars[1]:
            raise HeadprofError(f"probe {probe.id}: tokens cover chars {covered}, not the whole span {chars}")
        spans[name] = span
    needle = char_span_to_tokens(offsets, probe.needle_chars)
    if needle is None:
        raise HeadprofError(f"probe {probe.id}: the needle {probe.needle_chars} is not in the tokenized prompt")
    check_needle_in_context(tokenizer, probe, prompt_ids[needle[0] : needle[1]])
    target_ids, target_offsets = _target_ids(tokenizer, probe, prompt_ids)
    if not target_ids:
        raise HeadprofError(f"probe {probe.id}: empty answer target")
    # the answer inside the target, in characters of prompt + target
    sentence = probe.prompt[slice(*probe.sentence_chars)]
    start = len(probe.prompt) + probe.target.index(sentence) + (probe.answer_chars[0] - probe.sentence_chars[0])
    steps = char_span_to_tokens([tuple(o) for o in target_offsets], (start, start + len(probe.answer)))
    if steps is None:
        raise HeadprofError(f"probe {probe.id}: the answer is not in the tokenized target")
    return EncodedProbe(
        probe,
        prompt_ids,
        target_ids,
        spans,
        needle,
        steps,
        copy_keys(tokenizer, prompt_ids),
        copy_keys(tokenizer, target_ids),
    )
