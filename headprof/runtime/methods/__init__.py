"""The registry of KV-compression methods: one file per method, one line per method here.

Names are known without importing torch (the CLI lists them in `--help` and stays a light import);
a method's module is imported when the method is first used.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from headprof.errors import HeadprofError

if TYPE_CHECKING:
    from headprof.runtime.methods.base import Method


class MethodRegistry(Mapping[str, "type[Method]"]):
    """Method name -> class, from `"module:Class"` entries resolved on first use."""

    def __init__(self, entries: dict[str, str]):
        self._entries = entries

    def __getitem__(self, name: str) -> type[Method]:
        module, cls_name = self._entries[name].split(":")
        cls = getattr(importlib.import_module(f"{__name__}.{module}"), cls_name)
        if cls.name != name:
            raise HeadprofError(f"method registry: {cls_name}.name is '{cls.name}', registered as '{name}'")
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


METHODS = MethodRegistry(
    {
        "full": "full:Full",
        "streamingllm": "streamingllm:StreamingLLM",
        "h2o": "h2o:H2O",
        "snapkv": "snapkv:SnapKV",
        "pyramidkv": "pyramidkv:PyramidKV",
        "adakv": "adakv:AdaKV",
        "headkv": "headkv:HeadKV",
        "kvzip": "kvzip:KVzip",
    }
)


def build_method(name: str, **settings: Any) -> Method:
    """The method `name` with the settings its options take; settings meant for other methods are ignored
    (one `--kernel` serves the whole SnapKV family), settings no method takes are an error."""
    if name not in METHODS:
        raise HeadprofError(f"unknown method '{name}' ({', '.join(sorted(METHODS))})")
    known = {field.name for cls in METHODS.values() for field in dataclasses.fields(cls.Options)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise HeadprofError(f"unknown method option(s) {', '.join(unknown)} ({', '.join(sorted(known))})")
    cls = METHODS[name]
    own = {field.name for field in dataclasses.fields(cls.Options)}
    return cls(cls.Options(**{key: value for key, value in settings.items() if key in own}))


def option_types(name: str) -> dict[str, type]:
    """The options method `name` takes, with the type of each (from its options dataclass)."""
    hints = typing.get_type_hints(METHODS[name].Options)
    return {field.name: hints[field.name] for field in dataclasses.fields(METHODS[name].Options)}


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _convert(text: str, kind: type, key: str) -> Any:
    """One option's text as its dataclass field's type."""
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise HeadprofError(f"method option {key} takes true or false, got '{text}'")
    try:
        return kind(text)
    except ValueError:
        raise HeadprofError(
            f"method option {key} takes {'an' if kind is int else 'a'} {kind.__name__}, got '{text}'"
        ) from None


def parse_options(pairs: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`[method.]key=value` texts as typed settings for each of `methods` (types from the options dataclasses).

    A plain `key` goes to every named method that takes it (`scale=head-dim` reaches SnapKV, H2O and KVzip
    alike), `method.key` to that method alone; a key none of them takes, or a value its type refuses, is an
    error naming the keys they take. Ranges and choices are checked by the options dataclasses themselves."""
    settings: dict[str, dict[str, Any]] = {name: {} for name in methods}
    types = {name: option_types(name) for name in methods}
    for pair in pairs:
        target, sep, text = pair.partition("=")
        scope, dot, key = target.strip().rpartition(".")
        if not sep or not key:
            raise HeadprofError(f"method option '{pair}' is not key=value (or method.key=value)")
        if dot and scope not in settings:
            raise HeadprofError(f"method option '{pair}' names method '{scope}', not one of {', '.join(methods)}")
        takers = [scope] if dot else [name for name in methods if key in types[name]]
        if not takers or key not in types[takers[0]]:
            valid = sorted({k for name in ([scope] if dot else methods) for k in types[name]})
            where = scope if dot else ", ".join(methods)
            raise HeadprofError(f"unknown method option '{key}' for {where} ({', '.join(valid) or 'none'})")
        for name in takers:
            settings[name][key] = _convert(text.strip(), types[name][key], key)
    return settings


__all__ = ["METHODS", "MethodRegistry", "build_method", "option_types", "parse_options"]
