"""Token spans: a probe's character spans as token ranges, the copy keys, and its encoded view."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from headprof.errors import HeadprofError
from headprof.probes.build import encode_text, render_prompt
from headprof.probes.probe import EncodedProbe, Probe

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def char_span_to_tokens(offsets: Sequence[tuple[int, int]], chars: tuple[int, int]) -> tuple[int, int] | None:
    """Half-open token range of the tokens whose characters overlap `chars` (special tokens have empty offsets)."""
    start, end = chars
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not hits:
        return None
    return hits[0], hits[-1] + 1


# Token-string markers of a leading space (byte-level BPE, SentencePiece), for the copy check.
_SPACE_MARKERS = ("\u0120", "\u2581", " ")


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
