"""A KV cache whose heads keep different numbers of entries, with no padding.

Lifecycle of a layer: the prompt's K/V are stored densely and attended exactly (SDPA); right after
the prompt's attention the layer asks its method for importance scores, keeps the selected entries
and frees the dense tensors. Stored row r (r = b * S + s, S stored heads per batch element) keeps
`offsets[r+1] - offsets[r]` entries at prompt positions `positions[offsets[r]:offsets[r+1]]`; rows that keep
the same number of entries form a run, stored as `[R, n + room, d]` keys and values (rows sorted by length
once, at compression, so that each distinct length is one run: one run per layer when budgets are uniform).

Decode reads each row's own entries and nothing else: one attention call per run, the queries a row
serves (those of its KV group, at every position of the step) as rows of one head, so work and memory
traffic follow the kept entries. Tokens after the prompt (the question for a query-agnostic cache,
generated tokens) are written in place after each row's kept entries, in room that doubles when full
(amortized O(1) copies per token, no `torch.cat` of the cache): the call is SDPA itself, on CPU and CUDA,
with its own fused kernels and float32 accumulation and no copy of the cache. Where several stored rows
read one KV head (`--gqa query` with GQA) the tokens after the prompt are stored once per KV head instead
(a long generation must not outgrow the full cache), and the two parts are merged exactly through their
log-sum-exps, as split-K decoding kernels merge their splits: in float32 on the CPU each part is PyTorch's
fused flash op (SDPA's own CPU kernel, which returns the log-sum-exp too); otherwise float32 math on the
part (a low-precision part is cast to float32 for its call: the flash op would round each part's output to
bf16 before the merge). Soft-capping takes the float32 math; attention sinks join the denominator.

A model's sliding-window (and chunked) layers are `WindowLayer`s: their cache is bounded by the
window already, so they are not budgeted; they keep a rolling window exactly as transformers does.

The layer plugs into transformers through the Cache API: `update()` returns the layer itself
instead of tensors, and the attention function registered as "headprof" (at the end of this
file) hands it the query. `get_seq_length()` counts every token seen, so RoPE positions of new tokens
continue from the true prompt length, not the compressed one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from headprof.attention import PLAIN, LogitExtras, capped
from headprof.errors import HeadprofError
from headprof.models.registry import model_attention, pop_logit_options, register_attention
from headprof.runtime.methods.base import Method
from headprof.runtime.selection import Selection

# Receives (layer index, query, dense keys, scaling) of an extra pass's attention, instead of compressing.
Observer = Callable[[int, torch.Tensor, torch.Tensor, float], None]

# PyTorch's fused CPU flash-attention op: SDPA's own CPU kernel, which also returns the log-sum-exp of each row.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_MIN_RECENT = 16  # first capacity of the recent part, in tokens


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


class _Layer(CacheLayerMixin):
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

    def adopt(self, source: _Layer, length: int) -> None:
        """Hold the first `length` tokens of `source`'s dense prompt (views, not copies; `source` is left as it
        is), deferred: the layer is then compressed by `CompressedCache.compress_all`."""
        self.device, self.dtype, self.n_kv = source.device, source.dtype, source.keys.shape[1]
        self.keys, self.values = source.keys[:, :, :length], source.values[:, :, :length]
        self.seen, self.deferred, self.is_initialized = length, True, True


@dataclass
class _Run:
    """Stored rows that keep `length` entries each, positions `first:end` of the rows sorted by length (r = b * S
    + s sorted stably, so uniform budgets keep row order): keys and values `[R, length + room, d]`. Where the
    layer stores one row per KV head, the tokens after the prompt follow each row's kept entries in place, so
    that one attention call reads a run's whole cache."""

    first: int
    end: int
    length: int
    keys: torch.Tensor
    values: torch.Tensor


class CompressedLayer(_Layer):
    """One decoder layer's KV: dense while the prompt runs, then per-head kept entries plus the tokens after it."""

    is_sliding = False

    def __init__(self, plan: LayerPlan, stats: CacheStats, index: int = 0):
        super().__init__(plan, stats, index)
        self.phase = "empty"  # empty -> dense -> compressed
        self.offsets: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.entry_scores: torch.Tensor | None = None  # per stored entry, for a method that evicts while decoding
        self.lengths: list[int] = []  # entries kept by each stored row (= offsets.diff(), on the host)
        self.runs: list[_Run] = []
        self._order: torch.Tensor | None = None  # the rows sorted by length (None: already in that order)
        self._inverse: torch.Tensor | None = None  # where each row is in that order
        self.n_recent = 0  # tokens after the prompt
        self.capacity = 0  # room for them: in every run's rows, or in the separate buffer
        self._recent: tuple[torch.Tensor, torch.Tensor] | None = None  # [B, Hkv, capacity, d] when S > Hkv
        self._shared = False  # a fork's twin reads the same buffers: copy them before writing
        self._row_budgets: torch.Tensor | None = None

    def adopt(self, source: _Layer, length: int) -> None:
        super().adopt(source, length)
        self.phase = "dense"

    # ---------------------------------------------------------- what is held

    @property
    def flat_keys(self) -> torch.Tensor:
        """Kept keys of every stored row, concatenated `[N, d]` (row r owns `offsets[r]:offsets[r+1]`)."""
        return self._flat([run.keys[:, : run.length].reshape(-1, run.keys.shape[-1]) for run in self.runs])

    @property
    def flat_values(self) -> torch.Tensor:
        return self._flat([run.values[:, : run.length].reshape(-1, run.values.shape[-1]) for run in self.runs])

    def _flat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The runs' kept entries (in sorted row order) back in row order."""
        stored = _concat(parts)
        if self._order is None:
            return stored
        lengths = self.offsets.diff()
        row = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
        sorted_lengths = lengths[self._order]
        starts = torch.cat([sorted_lengths.new_zeros(1), sorted_lengths.cumsum(0)[:-1]])
        index = starts[self._inverse[row]] + torch.arange(row.numel(), device=row.device) - self.offsets[row]
        return stored[index]

    @property
    def recent_keys(self) -> torch.Tensor:
        """Keys `[B, Hkv, n, d]` of the tokens after the prompt."""
        return self._recent_part(0)

    @property
    def recent_values(self) -> torch.Tensor:
        return self._recent_part(1)

    def _recent_part(self, which: int) -> torch.Tensor:
        if self._recent is not None:
            return self._recent[which][:, :, : self.n_recent]
        parts = [(run.keys, run.values)[which] for run in self.runs]
        held = _concat([part[:, run.length : run.length + self.n_recent] for part, run in zip(parts, self.runs)])
        batch = len(self.lengths) // self.n_stored
        return self._in_row_order(held, 0).reshape(batch, self.n_kv, self.n_recent, held.shape[-1])

    def _in_sorted_order(self, rows: torch.Tensor, dim: int) -> torch.Tensor:
        return rows if self._order is None else rows.index_select(dim, self._order)

    def _in_row_order(self, rows: torch.Tensor, dim: int) -> torch.Tensor:
        return rows if self._order is None else rows.index_select(dim, self._inverse)

    # ---------------------------------------------------------- Cache API

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

    # ---------------------------------------------------------- the tokens after the prompt

    def _append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Write new tokens `[B, Hkv, n, d]` after the held ones: one copy of them, no `torch.cat` of the cache."""
        if self._shared:
            self._unshare()
        start, end = self.n_recent, self.n_recent + key_states.shape[-2]
        self._reserve(end)
        if self._recent is not None:
            self._recent[0][:, :, start:end] = key_states
            self._recent[1][:, :, start:end] = value_states
        else:  # one stored row per KV head: row r = b * Hkv + h
            keys = self._in_sorted_order(key_states.reshape(-1, *key_states.shape[2:]), 0)
            values = self._in_sorted_order(value_states.reshape(-1, *value_states.shape[2:]), 0)
            for run in self.runs:
                run.keys[:, run.length + start : run.length + end] = keys[run.first : run.end]
                run.values[:, run.length + start : run.length + end] = values[run.first : run.end]
        self.n_recent = end

    def _reserve(self, needed: int) -> None:
        """Room for `needed` tokens after the prompt: it doubles when full (amortized O(1) copies per token)."""
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity, _MIN_RECENT)
        if self._recent is not None:
            self._recent = tuple(_grown(t, 2, self.n_recent, capacity) for t in self._recent)
        else:
            for run in self.runs:
                used, size = run.length + self.n_recent, run.length + capacity
                run.keys, run.values = _grown(run.keys, 1, used, size), _grown(run.values, 1, used, size)
        self.capacity = capacity

    def _unshare(self) -> None:
        """Own copies of the buffers a fork shares, before writing into them."""
        self.runs = [replace(run, keys=run.keys.clone(), values=run.values.clone()) for run in self.runs]
        if self._recent is not None:
            self._recent = tuple(t.clone() for t in self._recent)
        self._shared = False

    # ---------------------------------------------------------- attention

    def attend(
        self, module: torch.nn.Module, query: torch.Tensor, scaling: float, extras: LogitExtras = PLAIN
    ) -> torch.Tensor:
        """Attention output `[B, q, Hq, d]`: exact over the dense prompt, then over kept entries and recent part."""
        if self.phase == "compressed":
            output = self._attend_compressed(query, scaling, extras)
            if self.plan.method.evicts:
                self.plan.method.evict(self, query, scaling)
            return output
        output = model_attention(module, query, self.keys, self.values, None, scaling, extras)
        if self.observer is not None:
            self.observer(self.index, query, self.keys, scaling)
        elif not self.deferred:
            self.compress(query, scaling)
        return output

    def _attend_compressed(self, query: torch.Tensor, scaling: float, extras: LogitExtras) -> torch.Tensor:
        batch, n_heads, q_len, dim = query.shape
        # stored row r's queries (the query heads it serves, each of the q positions) as rows of one head
        rows = self._in_sorted_order(query.reshape(1, len(self.lengths), -1, dim), 1)
        per = rows.shape[2] // q_len
        if self._recent is None:  # each row holds its whole cache: one call per run, nothing to merge
            parts = []
            for run in self.runs:
                size = run.length + self.n_recent
                inputs = rows[:, run.first : run.end], run.keys[None, :, :size], run.values[None, :, :size], scaling
                visible = _causal_tail(q_len, size, per, query.device)
                if extras.plain:
                    parts.append((_sdpa(*inputs, visible), None))
                else:
                    parts.append(_attention_with_lse(*inputs, visible, extras))
            output = self._in_row_order(_concat([part[0] for part in parts], dim=1), 1)
            output = output.reshape(batch, n_heads, q_len, -1)
            if extras.sinks is not None:  # exp(sink) joins the denominator
                lse = self._in_row_order(_concat([part[1] for part in parts], dim=1), 1)
                lse = lse.reshape(batch, n_heads, q_len)
                output = output * torch.sigmoid(lse - extras.sinks.float().view(1, -1, 1))[..., None]
            return output.to(query.dtype).transpose(1, 2)
        # query layout: kept entries per query head, the recent part once per KV head; merged by log-sum-exp
        kept = [
            _attention_with_lse(rows[:, run.first : run.end], run.keys[None], run.values[None], scaling, None, extras)
            if run.length
            else _nothing(rows[:, run.first : run.end])
            for run in self.runs
        ]
        kept_out = self._in_row_order(_concat([part[0] for part in kept], dim=1), 1)
        kept_out = kept_out.reshape(batch, n_heads, q_len, -1)
        kept_lse = self._in_row_order(_concat([part[1] for part in kept], dim=1), 1).reshape(batch, n_heads, q_len)
        group_rows = query.reshape(batch, self.n_kv, -1, dim)
        visible = _causal_tail(q_len, self.n_recent, group_rows.shape[2] // q_len, query.device)
        recent_out, recent_lse = _attention_with_lse(
            group_rows, self.recent_keys, self.recent_values, scaling, visible, extras
        )
        recent_out = recent_out.reshape(batch, n_heads, q_len, -1)
        recent_lse = recent_lse.reshape(batch, n_heads, q_len)
        # each part's output weighted by its share of the softmax mass, in float32
        output = torch.lerp(recent_out, kept_out, torch.sigmoid(kept_lse - recent_lse)[..., None])
        if extras.sinks is not None:
            total = torch.logaddexp(kept_lse, recent_lse)
            output = output * torch.sigmoid(total - extras.sinks.float().view(1, -1, 1))[..., None]
        return output.to(query.dtype).transpose(1, 2)

    def row_budgets(self, batch: int) -> torch.Tensor:
        """Budget of every stored row `[B * S]`, on the cache's device (copied there once, not every step)."""
        if self._row_budgets is None or self._row_budgets.numel() != batch * self.n_stored:
            self._row_budgets = self.plan.budgets.repeat(batch).to(self.offsets.device)
        return self._row_budgets

    # ---------------------------------------------------------- compression

    @property
    def n_stored(self) -> int:
        return self.plan.budgets.numel()

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

    def store(
        self,
        flat_keys: torch.Tensor,
        flat_values: torch.Tensor,
        positions: torch.Tensor,
        offsets: torch.Tensor,
        entry_scores: torch.Tensor | None = None,
        lengths: list[int] | None = None,
    ) -> None:
        """Hold these entries (row r owns `offsets[r]:offsets[r+1]` of the flat `[N, d]` tensors, positions sorted)
        and no recent part. Rows are grouped by length, so that each distinct length is one run (one attention
        call): rows already in that order (uniform budgets) are views of the flat tensors, others are gathered
        once here. Room for the tokens to come is made when the first arrives. `lengths`: `offsets.diff()` when
        the caller knows it on the host (H2O's eviction does, every step); otherwise it is read once."""
        self.offsets, self.positions = offsets, positions.to(torch.int32)
        self.entry_scores = entry_scores
        self.lengths = offsets.diff().tolist() if lengths is None else lengths
        order = sorted(range(len(self.lengths)), key=self.lengths.__getitem__)
        self._order = self._inverse = None
        if order != list(range(len(order))):  # the same stable sort on the device: no host sync
            self._order = torch.argsort(offsets.diff(), stable=True)
            self._inverse = torch.argsort(self._order)
        sorted_lengths = [self.lengths[row] for row in order]
        self.runs = []
        flat = 0
        for first, end in _runs(sorted_lengths):
            length, span = sorted_lengths[first], (end - first) * sorted_lengths[first]
            if self._order is None:
                index: slice | torch.Tensor = slice(flat, flat + span)
            else:
                starts = offsets[self._order[first:end]]
                index = (starts[:, None] + torch.arange(length, device=starts.device)[None, :]).reshape(-1)
            keys = flat_keys[index].view(end - first, length, flat_keys.shape[-1])
            values = flat_values[index].view(end - first, length, flat_values.shape[-1])
            self.runs.append(_Run(first, end, length, keys, values))
            flat += span
        self.n_recent = self.capacity = 0
        self._recent = None
        if self.n_stored != self.n_kv:  # several stored rows read one KV head's recent tokens: stored apart
            batch, shape = len(self.lengths) // self.n_stored, (self.n_kv, 0)
            self._recent = (
                flat_keys.new_empty(batch, *shape, flat_keys.shape[-1]),
                flat_values.new_empty(batch, *shape, flat_values.shape[-1]),
            )
        self._shared = False
        self.phase = "compressed"

    def per_stored(self, states: torch.Tensor) -> torch.Tensor:
        """`[B, Hkv, n, d]` (how the recent part is stored) -> `[B, S, n, d]` (one copy per stored head)."""
        return states.repeat_interleave(self.n_stored // self.n_kv, dim=1)

    # ---------------------------------------------------------- accounting

    def _buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(buffer, the part of it in use) of every tensor the compressed layer holds."""
        embedded = self.n_recent if self._recent is None else 0
        pairs = [(t, t[:, : run.length + embedded]) for run in self.runs for t in (run.keys, run.values)]
        if self._recent is not None:
            pairs += [(t, t[:, :, : self.n_recent]) for t in self._recent]
        return pairs

    def storage_bytes(self) -> tuple[int, int, int]:
        """(allocated bytes of stored K/V, bytes the kept entries need, index metadata bytes). Room reserved for
        tokens still to come is not counted (`reserved_bytes`)."""
        dense = [t for t in (self.keys, self.values) if t is not None]
        buffers = self._buffers()
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in dense}
        storages.update({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t, _ in buffers})
        allocated = sum(storages.values()) - self.reserved_bytes()
        needed = sum(map(_nbytes, dense)) + sum(_nbytes(used) for _, used in buffers)
        metadata = (self.offsets, self.positions, self.entry_scores)
        index = sum(t.numel() * t.element_size() for t in metadata if t is not None)
        return allocated, needed, index

    def reserved_bytes(self) -> int:
        """Room for tokens not generated yet (at most as much as the tokens after the prompt take)."""
        return sum(_nbytes(buffer) - _nbytes(used) for buffer, used in self._buffers() if buffer.shape != used.shape)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _concat(parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


def _grown(tensor: torch.Tensor, dim: int, used: int, size: int) -> torch.Tensor:
    """A new buffer of `size` along `dim`, holding the first `used` of `tensor`."""
    shape = list(tensor.shape)
    shape[dim] = size
    grown = tensor.new_empty(shape)
    grown.narrow(dim, 0, used).copy_(tensor.narrow(dim, 0, used))
    return grown


def _runs(lengths: list[int]) -> list[tuple[int, int]]:
    """Maximal runs `(first, end)` of consecutive rows keeping the same number of entries. Uniform budgets make
    one run per layer (for a batch of equal prompts too)."""
    runs: list[tuple[int, int]] = []
    first = 0
    for row in range(1, len(lengths) + 1):
        if row == len(lengths) or lengths[row] != lengths[first]:
            runs.append((first, row))
            first = row
    return runs


def _causal_tail(q_len: int, size: int, repeats: int, device: torch.device) -> torch.Tensor | None:
    """Which of `size` entries each query row sees when the last `q_len` entries are the queries' own tokens:
    `[repeats * q_len, size]` (rows ordered head, then position), or None for one query (it sees all)."""
    if q_len == 1:
        return None
    limit = torch.arange(q_len, device=device)[:, None] + (size - q_len)
    return (torch.arange(size, device=device)[None, :] <= limit).repeat(repeats, 1)


def _sdpa(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float, visible: torch.Tensor | None
) -> torch.Tensor:
    """PyTorch's SDPA: its fused kernels on CPU and CUDA, float32 accumulation whatever the dtype, no copies."""
    return torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=visible, scale=scaling)


def _nothing(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The part of a row that keeps no entry: no output, no mass (log-sum-exp -inf)."""
    return torch.zeros_like(rows, dtype=torch.float), torch.full(rows.shape[:-1], float("-inf"), device=rows.device)


def _attention_with_lse(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scaling: float,
    visible: torch.Tensor | None,
    extras: LogitExtras,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of queries `[B, H, n, d]` over keys and values `[B, H, m, d]` (each head its own) in float32,
    with the log-sum-exp `[B, H, n]` of each row's logits, so that parts of one softmax can be merged.

    `visible`: `[n, m]` or None (all). In float32 on the CPU without soft-capping: the fused flash op SDPA runs,
    which returns the log-sum-exp too. Otherwise float32 math, as SDPA's math path computes it: queries scaled
    before the matmul, capped logits, exact softmax. (The flash op rounds a bf16 or fp16 output before the
    merge, a second rounding that measured 1.2x SDPA's mean error: low precision takes the float32 math.)"""
    fused = query.dtype == torch.float32 and query.device.type == "cpu" and extras.softcap is None
    if fused and _FLASH_CPU is not None and keys.shape[-1] == values.shape[-1]:
        mask = None if visible is None else torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))
        return _FLASH_CPU(query, keys, values, attn_mask=mask, scale=scaling)
    logits = capped((query.float() * scaling) @ keys.float().transpose(-1, -2), extras.softcap)
    if visible is not None:
        logits = logits.masked_fill(~visible, float("-inf"))
    lse = logits.logsumexp(dim=-1)
    return (logits - lse[..., None]).exp() @ values.float(), lse


class WindowLayer(_Layer):
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
