"""The uncompressed baseline."""

from headprof.runtime.methods.base import Method


class Full(Method):
    """No compression: transformers' own DynamicCache and SDPA, the reference every method is measured against."""

    name = "full"
    compresses = False
