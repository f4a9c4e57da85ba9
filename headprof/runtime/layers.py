"""The layers of a `CompressedCache` and what they share: each layer's `LayerPlan`, the cache's `CacheStats`,
`BaseLayer` (the Cache API refusals and adopting another cache's dense prompt), and `WindowLayer`, a model's
sliding-window layer kept as transformers keeps it. The budgeted layer is `cache.CompressedLayer`, its storage
`storage.KeptEntries`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import CacheLayerMixin

from headprof.errors import HeadprofError
from headprof.runtime.methods.base import Method

# Receives (layer index, query, dense keys, dense values, scaling) of an extra pass's attention, instead of
# compressing; returns the attention output `[B, n, Hq, d]` where it computed it on the way, else None. The values
# are None where the model's attention is no plain softmax (soft-capping, sinks): no output is wanted there.
Observer = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor | None]


@dataclass
class LayerPlan:
    """What one layer keeps: `budgets[s]` entries (window included) for each of its S stored heads, chosen by
    `method`; or, for a sliding-window layer of the model (`sliding_window` > 0), its rolling window (budgets
    unused)."""

    method: Method
    budgets: torch.Tensor
    window: int
    sliding_window: int = 0


@dataclass
class CacheStats:
    """Compression time and count of heads that dropped entries, shared by a cache's layers.

    On CUDA each compression is timed by a pair of CUDA events, read (one wait) when `compress_seconds` is
    asked for, instead of synchronizing the device around every layer."""

    wall_seconds: float = 0.0
    compressed_heads: int = 0
    events: list[tuple[Any, Any]] = field(default_factory=list)

    @property
    def compress_seconds(self) -> float:
        if self.events:
            self.events[-1][1].synchronize()
            self.wall_seconds += sum(start.elapsed_time(end) for start, end in self.events) / 1e3
            self.events = []
        return self.wall_seconds


class BaseLayer(CacheLayerMixin):
    """What both kinds of layer share: their plan, the cache's stats, and the refusals of what they don't support."""

    is_compileable = False
    is_croppable = False

    def __init__(self, plan: LayerPlan, stats: CacheStats, index: int = 0):
        super().__init__()
        self.plan = plan
        self.stats = stats
        self.index = index
        self.seen = 0
        self.deferred = False  # True: the press compresses later, from an extra pass's scores
        self.observer: Observer | None = None

    def reset(self) -> None:
        self.__init__(self.plan, self.stats, self.index)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise HeadprofError("beam search is not supported with a compressed KV cache (use greedy or sampling)")

    def crop(self, tokens_to_remove: int) -> None:
        raise HeadprofError("a compressed KV cache cannot be cropped (assisted decoding is not supported)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        if repeats != 1:
            raise HeadprofError("num_return_sequences > 1 is not supported with a compressed KV cache")

    def adopt(self, source: BaseLayer, length: int) -> None:
        """Hold the first `length` tokens of `source`'s dense prompt (views, not copies; `source` is left as it
        is), deferred: the layer is then compressed by `CompressedCache.compress_all`."""
        self.device, self.dtype, self.n_kv = source.keys.device, source.keys.dtype, source.keys.shape[1]
        self.keys, self.values = source.keys[:, :, :length], source.values[:, :, :length]
        self.seen, self.deferred, self.is_initialized = length, True, True


class WindowLayer(BaseLayer):
    """A sliding-window (or chunked) layer of the model: its rolling window, not budgeted.

    Kept as transformers' `DynamicSlidingWindowLayer` keeps it, so the masks transformers builds from
    `get_mask_sizes` stay exact: after each update the last `w - 1` tokens (with the new ones, every
    query sees `w` positions), and `update` returns the window plus the new tokens. Unlike transformers'
    layer, the window is stored compactly (a copy, not a view into the last step's buffer), so `kv_bytes`
    counts exactly the window. While the press defers compression (an extra pass follows the prompt),
    everything is kept until `end_extra_pass` rolls back to the prompt's window.
    """

    is_sliding = True

    def __init__(self, plan: LayerPlan, stats: CacheStats, index: int = 0):
        super().__init__(plan, stats, index)
        self.window = plan.sliding_window  # an extra pass's observer scores only budgeted layers

    @property
    def phase(self) -> str:
        return "empty" if self.seen == 0 else "dense" if self.deferred else "compressed"

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.keys = key_states.new_zeros(*key_states.shape[:2], 0, key_states.shape[-1])
        self.values = value_states.new_zeros(*value_states.shape[:2], 0, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen += key_states.shape[-2]
        keys = torch.cat([self.keys, key_states], dim=-2)
        values = torch.cat([self.values, value_states], dim=-2)
        if self.deferred:
            self.keys, self.values = keys, values
            shown = self.window - 1 + key_states.shape[-2]  # what get_mask_sizes advertised
            return keys[:, :, -shown:], values[:, :, -shown:]
        self.keys, self.values = self._tail(keys), self._tail(values)
        return keys, values

    def _tail(self, states: torch.Tensor) -> torch.Tensor:
        """The last `w - 1` positions, in their own storage."""
        start = states.shape[-2] - (self.window - 1)
        return states[:, :, start:].clone() if start > 0 else states

    def end_extra_pass(self, prefix: int) -> None:
        """Forget an extra pass's tokens: back to the window at the end of the first `prefix` tokens."""
        self.keys = self._tail(self.keys[:, :, :prefix].clone())
        self.values = self._tail(self.values[:, :, :prefix].clone())
        self.seen, self.deferred = prefix, False

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return min(self.seen, self.window - 1) + query_length, max(self.seen - self.window + 1, 0)

    def get_max_length(self) -> int:
        return self.window

    def storage_bytes(self) -> tuple[int, int, int]:
        """(allocated bytes of the window's K/V, bytes it needs, index bytes: none)."""
        tensors = [t for t in (self.keys, self.values) if t is not None]
        return (
            sum(t.untyped_storage().nbytes() for t in tensors),
            sum(t.numel() * t.element_size() for t in tensors),
            0,
        )
