"""headprof: profile attention heads for long-context retrieval and reasoning, and compress the KV cache with it."""

__version__ = "0.1.0"
