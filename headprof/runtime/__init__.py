"""Generation with a head-level compressed KV cache.

    from headprof.runtime import compressed
    with compressed(model, method="headkv", allocation=load_alloc("alloc-b128-headkv.safetensors")):
        out = model.generate(**inputs, max_new_tokens=64)

Names are imported on first use, so that `headprof.runtime.methods` (the registry the CLI lists)
and `headprof.runtime.selection` (pure tensor code) don't import transformers.
"""

from headprof.lazy import lazy_exports

_EXPORTS = {
    "BudgetPlan": "headprof.runtime.plan",
    "BudgetSource": "headprof.runtime.budgets",
    "default_method": "headprof.runtime.budgets",
    "plan_budgets": "headprof.runtime.budgets",
    "CompressedCache": "headprof.runtime.cache",
    "METHODS": "headprof.runtime.methods",
    "build_method": "headprof.runtime.methods",
    "Method": "headprof.runtime.methods.base",
    "Press": "headprof.runtime.press",
    "build_press": "headprof.runtime.press",
    "cache_bytes": "headprof.runtime.cache",
    "compressed": "headprof.runtime.press",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = sorted(_EXPORTS)
