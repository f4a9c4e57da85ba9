"""The haystack: essay text cleaned into prose paragraphs, built in or read from a file or folder."""

from __future__ import annotations

import re
from pathlib import Path

from headprof import validation
from headprof.errors import HeadprofError

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
