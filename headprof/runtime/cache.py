"""A KV cache whose heads keep different numbers of entries, with no padding.

Lifecycle of a layer (`CompressedLayer`): the prompt's K/V are stored densely and attended exactly (SDPA);
right after the prompt's attention the layer asks its method for importance scores, keeps the selected entries
(`storage.KeptEntries.store`: flat per-head runs) and frees the dense tensors; decoding appends after the kept
entries and attends them (`decode.attend_kept`). A model's sliding-window (and chunked) layers are
`layers.WindowLayer`s: their cache is bounded by the window already, so they are not budgeted; they keep a
rolling window exactly as transformers does.

The layer plugs into transformers through the Cache API: `update()` returns the layer itself
instead of tensors, and the attention function registered as "headprof" (at the end of this
file) hands it the query. `get_seq_length()` counts every token seen, so RoPE positions of new tokens
continue from the true prompt length, not the compressed one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from transformers.cache_utils import Cache

from headprof.attention import PLAIN, LogitExtras
from headprof.errors import HeadprofError
from headprof.models.registry import model_attention, pop_logit_options, register_attention
from headprof.runtime.decode import attend_kept
from headprof.runtime.layers import BaseLayer, CacheStats, LayerPlan, Observer, WindowLayer
from headprof.runtime.selection import Selection
from headprof.runtime.storage import KeptEntries

__all__ = ["ATTENTION_IMPL", "CacheStats", "CompressedCache", "CompressedLayer", "LayerPlan", "Observer", "WindowLayer"]


class CompressedLayer(KeptEntries):
    """One decoder layer's KV: dense while the prompt runs, then per-head kept entries plus the tokens after it."""

    is_sliding = False

    def __init__(self, plan: LayerPlan, stats: CacheStats, index: int = 0):
        super().__init__(plan, stats, index)
        self.phase = "empty"  # empty -> dense -> compressed
        self._row_budgets: torch.Tensor | None = None

    def adopt(self, source: BaseLayer, length: int) -> None:
        super().adopt(source, length)
        self.phase = "dense"

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.n_kv = key_states.shape[1]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.seen += key_states.shape[-2]
        if self.phase == "compressed":
            self._append(key_states, value_states)
        else:
            self.phase = "dense" if self.phase == "empty" else self.phase
            self.keys = key_states if self.keys is None else torch.cat([self.keys, key_states], dim=-2)
            self.values = value_states if self.values is None else torch.cat([self.values, value_states], dim=-2)
        return self, self  # the "headprof" attention function takes it from here

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def attend(
        self, module: torch.nn.Module, query: torch.Tensor, scaling: float, extras: LogitExtras = PLAIN
    ) -> torch.Tensor:
        """Attention output `[B, q, Hq, d]`: exact over the dense prompt, then over kept entries and recent part."""
        if self.phase == "compressed":
            output = attend_kept(self, query, scaling, extras)
            if self.plan.method.evicts:
                self.plan.method.evict(self, query, scaling)
            return output
        observed = None
        if self.observer is not None:  # values only where a softmax can be the model's attention (no cap, no sinks)
            observed = self.observer(self.index, query, self.keys, self.values if extras.plain else None, scaling)
        if observed is None:
            observed = model_attention(module, query, self.keys, self.values, None, scaling, extras)
        if self.observer is None and not self.deferred:
            self.compress(query, scaling)
        return observed

    def row_budgets(self, batch: int) -> torch.Tensor:
        """Budget of every stored row `[B * S]`, on the cache's device (copied there once, not every step)."""
        if self._row_budgets is None or self._row_budgets.numel() != batch * self.n_stored:
            self._row_budgets = self.plan.budgets.repeat(batch).to(self.offsets.device)
        return self._row_budgets

    def compress(
        self,
        query: torch.Tensor | None,
        scaling: float,
        selection: Selection | None = None,
        scores: torch.Tensor | None = None,
    ) -> None:
        """Keep the method's selection of the dense prompt K/V, in flat per-head segments, and free the rest.

        `selection` given (chosen across layers after extra passes, or by a sweep from `scores` it computed
        once for many budgets): keep it; otherwise the method scores the prompt from its own queries and selects.
        """
        events = None
        if self.keys.device.type == "cuda":
            events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            events[0].record()
        start = time.perf_counter()
        method, batch, n_kv, total, dim = self.plan.method, *self.keys.shape
        if selection is None and not method.evicts and bool((self.plan.budgets >= total).all()):
            # every head keeps the whole prompt whatever the scores: no scoring pass (plans keep budgets on the
            # CPU, so the test reads nothing back from the device). H2O still scores: its decode evicts by them.
            device, n_rows = self.keys.device, batch * self.n_stored
            offsets = torch.arange(n_rows + 1, device=device) * total
            selection = Selection(torch.arange(total, device=device).repeat(n_rows), offsets)
        elif selection is None:
            scores = method.score(query, self.keys, scaling, self.plan.window, self.n_stored)
            selection = method.select(scores, self.plan.budgets, self.plan.window)
        rows = torch.repeat_interleave(
            torch.arange(batch * self.n_stored, device=self.keys.device),
            selection.lengths,
            output_size=selection.positions.numel(),
        )
        # row r = b * S + s stores KV head s // (S / Hkv) of batch element b
        kv_rows = (rows // self.n_stored) * n_kv + (rows % self.n_stored) // (self.n_stored // n_kv)
        flat_index = kv_rows * total + selection.positions
        entry_scores = None
        if method.evicts and scores is not None:
            entry_scores = scores.reshape(-1)[rows * total + selection.positions].float()
        self.store(
            self.keys.reshape(-1, dim)[flat_index],
            self.values.reshape(-1, dim)[flat_index],
            selection.positions,
            selection.offsets,
            entry_scores,
        )
        self.keys = self.values = None
        self.stats.compressed_heads += sum(length < total for length in self.lengths)
        if events is None:
            self.stats.wall_seconds += time.perf_counter() - start
        else:
            events[1].record()
            self.stats.events.append(events)


class CompressedCache(Cache):
    """One `CompressedLayer` per budgeted decoder layer, a `WindowLayer` per sliding-window layer; made by a
    `Press` (see `press.py`)."""

    # The config of the model whose press made this cache (`Press.new_cache`): only headprof's attention reads
    # a compressed layer, so a forward with the model's own attention (outside `with press:`) is refused.
    attention_config: Any = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        config = self.attention_config
        if config is not None and getattr(config, "_attn_implementation", None) != ATTENTION_IMPL:
            raise HeadprofError(
                "this cache was made by a headprof press and is read by its attention: use it inside "
                "`with press:` (or `with compressed(...)`), not with the model alone"
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def __init__(self, plans: list[LayerPlan]):
        self.stats = CacheStats()
        super().__init__(
            layers=[
                (WindowLayer if plan.sliding_window else CompressedLayer)(plan, self.stats, i)
                for i, plan in enumerate(plans)
            ]
        )

    @property
    def budgeted(self) -> list[CompressedLayer]:
        """The layers that compress (all but the sliding-window ones)."""
        return [layer for layer in self.layers if isinstance(layer, CompressedLayer)]

    @property
    def phase(self) -> str:
        return (self.budgeted or self.layers)[0].phase

    def kv_bytes(self) -> dict[str, int]:
        """Bytes of the K/V held (`kv_bytes`), of what they need, padding, index metadata, and the recent
        buffers' room for tokens still to come (`reserved_bytes`, not part of `kv_bytes`)."""
        allocated, needed, index = (sum(v) for v in zip(*(layer.storage_bytes() for layer in self.layers)))
        return {
            "kv_bytes": allocated,
            "kv_bytes_needed": needed,
            "padding_bytes": allocated - needed,
            "index_bytes": index,
            "reserved_bytes": sum(layer.reserved_bytes() for layer in self.budgeted),
        }

    def defer(self) -> None:
        """Keep the prompt dense at its end: the press compresses it after an extra pass (`compress_all`)."""
        for layer in self.layers:
            layer.deferred = True

    def adopt(self, dense: CompressedCache, length: int) -> None:
        """Start from the first `length` tokens of another cache's dense prompt (a sweep's, kept dense by
        `defer`), to compress them with `compress_all` under this cache's own budgets: one prefill, many caches."""
        for layer, source in zip(self.layers, dense.layers):
            layer.adopt(source, length)

    def observe(self, observer: Observer | None) -> None:
        """Hand each layer's dense attention inputs to `observer` (or stop, with None) during an extra pass."""
        for layer in self.layers:
            layer.observer = observer

    def set_budgets(self, budgets: torch.Tensor) -> None:
        """Budgets `[L, S]` for the prompt about to run (a method's budgets can depend on its length)."""
        for layer in self.budgeted:
            layer.plan = replace(layer.plan, budgets=budgets[layer.index])

    def truncate(self, length: int) -> None:
        """Drop the dense tokens after the first `length` (an extra pass's), so the next pass starts there too."""
        for layer in self.layers:
            layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]
            layer.seen = length

    def compress_all(self, scores: dict[int, torch.Tensor]) -> None:
        """Compress every deferred layer at once: budgeted layer l from `scores[l]` `[B, S, T]`, selected by the
        method across layers; sliding-window layers go back to their window."""
        start = time.perf_counter()
        budgeted = self.budgeted
        selections = []
        if budgeted:  # a model whose every layer has a sliding window (Mistral) has nothing to select
            method, window = budgeted[0].plan.method, budgeted[0].plan.window
            budgets = torch.stack([layer.plan.budgets for layer in budgeted])
            selections = method.select_layers([scores[layer.index] for layer in budgeted], budgets, window)
        self.stats.wall_seconds += time.perf_counter() - start
        for layer in self.layers:
            if isinstance(layer, WindowLayer):
                layer.end_extra_pass(layer.seen)
        for layer, selection in zip(budgeted, selections):
            layer.compress(None, 1.0, selection=selection, scores=scores[layer.index])

    @classmethod
    def stack(cls, caches: list[CompressedCache]) -> CompressedCache:
        """One cache whose batch element i is `caches[i]`: compressed caches of one prompt, one element each, in
        the same layout (a sweep decodes its configurations together). Their budgets may differ; a method that
        evicts while decoding cannot be stacked (its budgets are per layer, not per element)."""
        if any(cache.phase != "compressed" for cache in caches) or len({c.get_seq_length() for c in caches}) > 1:
            raise HeadprofError("only compressed caches of one prompt can be stacked")
        stacked = cls([layer.plan for layer in caches[0].layers])
        for index, layer in enumerate(stacked.layers):
            parts = [cache.layers[index] for cache in caches]
            layer.device, layer.dtype, layer.seen, layer.is_initialized = (
                parts[0].device,
                parts[0].dtype,
                parts[0].seen,
                True,
            )
            if isinstance(layer, WindowLayer):
                layer.keys = torch.cat([part.keys for part in parts])
                layer.values = torch.cat([part.values for part in parts])
                continue
            layer.n_kv = parts[0].n_kv
            shifts = torch.tensor([0] + [part.flat_keys.shape[0] for part in parts[:-1]]).cumsum(0).tolist()
            offsets = torch.cat(
                [parts[0].offsets[:1]] + [part.offsets[1:] + shift for part, shift in zip(parts, shifts)]
            )
            layer.store(
                torch.cat([part.flat_keys for part in parts]),
                torch.cat([part.flat_values for part in parts]),
                torch.cat([part.positions for part in parts]),
                offsets,
            )
        return stacked

    @classmethod
    def holding(cls, plans: list[LayerPlan], full: Cache) -> CompressedCache:
        """Every entry of a full cache of one prompt (transformers' `DynamicCache`, no sliding-window layers) as a
        compressed cache with these plans' layout (non-evicting ones): the full cache as a row of a batch of
        compressed caches of the same prompt, which a sweep decodes together. Attention reads the same entries."""
        cache = cls(plans)
        for layer, source in zip(cache.layers, full.layers):
            batch, _, total, _ = source.keys.shape
            layer.adopt(source, total)
            rows, device = batch * layer.n_stored, source.keys.device
            offsets = torch.arange(rows + 1, device=device) * total
            layer.compress(None, 1.0, selection=Selection(torch.arange(total, device=device).repeat(rows), offsets))
        return cache

    @classmethod
    def stack_prompts(cls, caches: list[CompressedCache], length: int) -> CompressedCache:
        """One cache whose batch element i is `caches[i]`: compressed caches of different prompts (one element
        each, the same budgets and layout), as the rows of a left-padded batch `length` tokens long decode them.
        Kept entries need no padding (each row keeps its own, `KeptEntries` groups rows by length) and every
        position the cache reports is the padded batch's; a sliding-window layer's window is left-padded to the
        batch's, which the batch's padding mask hides. Positions for RoPE come from that mask (each row continues
        from its own length), not from the cache."""
        if any(cache.phase != "compressed" for cache in caches) or max(c.get_seq_length() for c in caches) > length:
            raise HeadprofError("only compressed caches of prompts at most the batch's length can be stacked")
        twins = [cache.fork() for cache in caches]
        for twin in twins:
            for layer in twin.layers:
                if isinstance(layer, WindowLayer):
                    held = min(length, layer.window - 1)
                    pad = (0, 0, held - layer.keys.shape[-2], 0)
                    layer.keys = torch.nn.functional.pad(layer.keys, pad)
                    layer.values = torch.nn.functional.pad(layer.values, pad)
                layer.seen = length
        stacked = cls.stack(twins)
        stacked.attention_config = caches[0].attention_config
        return stacked

    def fold_recent(self) -> None:
        """The tokens after the compressed prompt become kept entries of every layer (`KeptEntries.fold_recent`):
        the cache can then be stacked with caches that compressed a longer prompt of the same length in tokens."""
        for layer in self.budgeted:
            layer.fold_recent()

    def kv_bytes_after(self, tokens: int) -> int:
        """The `kv_bytes` this compressed single-element cache will report once `tokens` more tokens have run
        through it: what a sweep that decodes caches stacked reports for each of them."""
        total = 0
        for layer in self.layers:
            allocated = layer.storage_bytes()[0]
            if isinstance(layer, WindowLayer):  # keeps the last w - 1 tokens
                stored = layer.keys.shape[-2]
                total += allocated // stored * min(layer.window - 1, layer.seen + tokens) if stored else 0
            else:
                keys, values = layer.runs[0].keys, layer.runs[0].values
                per_token = layer.n_kv * (keys.shape[-1] + values.shape[-1])
                total += allocated + tokens * per_token * keys.element_size()
        return total

    def kept_positions(self, layer_idx: int) -> list[torch.Tensor]:
        """Original prompt positions each stored head of a budgeted layer kept (for inspection and tests)."""
        layer = self.layers[layer_idx]
        return [layer.positions[a:b].long() for a, b in zip(layer.offsets[:-1].tolist(), layer.offsets[1:].tolist())]

    def fork(self) -> CompressedCache:
        """A copy that shares the (never mutated) compressed tensors, for asking several questions of one context."""
        if self.phase != "compressed":
            raise HeadprofError("only a compressed cache can be forked (run the prompt first)")
        twin = CompressedCache([layer.plan for layer in self.layers])
        twin.attention_config = self.attention_config
        twin.stats = replace(self.stats, events=list(self.stats.events))
        for source, target in zip(self.layers, twin.layers):
            target.__dict__.update({k: v for k, v in source.__dict__.items() if k != "stats"})
            target.stats = twin.stats
            if isinstance(target, CompressedLayer):  # tokens appended later go to each one's own copy
                source._shared = target._shared = True
        return twin


def cache_bytes(cache: Cache) -> dict[str, int]:
    """Stored KV bytes of any cache (ours, or transformers' DynamicCache for the full baseline)."""
    if isinstance(cache, CompressedCache):
        return cache.kv_bytes()
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]
    allocated = sum(t.untyped_storage().nbytes() for t in tensors)
    needed = sum(t.numel() * t.element_size() for t in tensors)
    return {
        "kv_bytes": allocated,
        "kv_bytes_needed": needed,
        "padding_bytes": allocated - needed,
        "index_bytes": 0,
        "reserved_bytes": 0,
    }


def _headprof_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: Any,
    value: Any,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
):
    """Registered attention: a `CompressedLayer` in the key slot runs our attention; tensors (a sliding-window
    layer's window, or a forward without a cache) get the model's own attention under the mask transformers built."""
    scaling, extras = pop_logit_options(query, kwargs)
    if isinstance(key, CompressedLayer):
        return key.attend(module, query, scaling, extras), None
    return model_attention(module, query, key, value, attention_mask, scaling, extras, **kwargs), None


ATTENTION_IMPL = "headprof"
register_attention(ATTENTION_IMPL, _headprof_attention)
