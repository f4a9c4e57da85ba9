"""Models by job: `spec` (what `--model` names, `ModelInfo`; no torch), `hub` (local cache first, then the hub),
`gguf` (dequantize once, cache), `fingerprint` (which checkpoint), `loading` (model + tokenizer on a device).

Names are imported on first use: `headprof.models.spec` stays a light import (no torch, no transformers).
"""

from headprof.lazy import lazy_exports

_EXPORTS = {
    "weights_fingerprint": "headprof.models.fingerprint",
    "cache_dir": "headprof.models.gguf",
    "dequantized_dir": "headprof.models.gguf",
    "local_weights": "headprof.models.gguf",
    "LoadedModel": "headprof.models.loading",
    "check_device": "headprof.models.loading",
    "load_model": "headprof.models.loading",
    "load_tokenizer": "headprof.models.loading",
    "model_info": "headprof.models.loading",
    "pick_dtype": "headprof.models.loading",
    "quiet_transformers": "headprof.models.loading",
    "ALIASES": "headprof.models.spec",
    "DEFAULT_MODEL": "headprof.models.spec",
    "ModelInfo": "headprof.models.spec",
    "ModelSpec": "headprof.models.spec",
    "check_supported": "headprof.models.spec",
    "embedded_gguf_path": "headprof.models.spec",
    "info_from_config": "headprof.models.spec",
    "resolve_model": "headprof.models.spec",
    "slugify": "headprof.models.spec",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
