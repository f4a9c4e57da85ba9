"""The registry of KV-compression methods: one small class per file, registered on import."""

from headprof.runtime.methods import adakv, full, h2o, headkv, kvzip, pyramidkv, snapkv, streamingllm  # noqa: F401
from headprof.runtime.methods.base import METHODS, Method, MethodOptions

__all__ = ["METHODS", "Method", "MethodOptions"]
