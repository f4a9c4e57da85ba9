"""The registry of KV-compression methods: one file per method, one line per method here.

Names are known without importing torch (the CLI lists them in `--help` and stays a light import);
a method's module is imported when the method is first used.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator, Mapping
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


__all__ = ["METHODS", "MethodRegistry", "build_method"]
