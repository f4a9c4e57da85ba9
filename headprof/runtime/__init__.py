"""Generation with a head-level compressed KV cache.

    from headprof.runtime import compressed
    with compressed(model, method="headkv", allocation=load_alloc("alloc-b128-headkv.safetensors")):
        out = model.generate(**inputs, max_new_tokens=64)

Names are imported on first use, so that `headprof.runtime.methods` (the registry the CLI lists)
and `headprof.runtime.selection` (pure tensor code) don't import transformers.
"""

import importlib
from typing import Any

_EXPORTS = {
    "BudgetPlan": "headprof.runtime.budgets",
    "default_method": "headprof.runtime.budgets",
    "plan_budgets": "headprof.runtime.budgets",
    "CompressedCache": "headprof.runtime.cache",
    "METHODS": "headprof.runtime.methods",
    "build_method": "headprof.runtime.methods",
    "Method": "headprof.runtime.methods.base",
    "Press": "headprof.runtime.press",
    "cache_bytes": "headprof.runtime.press",
    "compressed": "headprof.runtime.press",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
