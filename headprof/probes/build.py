"""Building probes: needles at depths of a haystack, each rendered through the chat template to a length."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from headprof.errors import HeadprofError
from headprof.probes.haystack import load_haystack
from headprof.probes.probe import DEFAULT_DEPTHS, DEFAULT_LENGTHS, DEFAULT_SEED, INSTRUCTION, Needle, Probe

if TYPE_CHECKING:
    from transformers import BatchEncoding, PreTrainedTokenizerBase


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
            "(give a longer haystack or smaller `lengths`)"
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
