"""Models by job: `spec` (what `--model` names, `ModelInfo`; no torch), `hub` (local cache first, then the hub),
`gguf` (dequantize once, cache), `fingerprint` (which checkpoint), `loading` (model + tokenizer on a device).

Names are imported on first use: `headprof.models.spec` stays a light import (no torch, no transformers).
"""

import importlib
from typing import Any

_EXPORTS = {
    "weights_fingerprint": "fingerprint",
    "cache_dir": "gguf",
    "dequantized_dir": "gguf",
    "local_weights": "gguf",
    "LoadedModel": "loading",
    "check_device": "loading",
    "load_model": "loading",
    "load_tokenizer": "loading",
    "model_info": "loading",
    "pick_dtype": "loading",
    "quiet_transformers": "loading",
    "ALIASES": "spec",
    "DEFAULT_MODEL": "spec",
    "ModelInfo": "spec",
    "ModelSpec": "spec",
    "check_supported": "spec",
    "embedded_gguf_path": "spec",
    "info_from_config": "spec",
    "resolve_model": "spec",
    "slugify": "spec",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
