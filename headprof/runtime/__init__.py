"""Generation with a head-level compressed KV cache.

    from headprof.runtime import compressed
    with compressed(model, method="headkv", allocation=load_alloc("alloc-b128-headkv.safetensors")):
        out = model.generate(**inputs, max_new_tokens=64)
"""

from headprof.runtime.cache import CompressedCache
from headprof.runtime.methods import METHODS, MethodOptions
from headprof.runtime.press import Press, cache_bytes, compressed

__all__ = ["METHODS", "CompressedCache", "MethodOptions", "Press", "cache_bytes", "compressed"]
