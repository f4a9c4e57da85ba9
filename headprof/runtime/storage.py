"""Flat per-head storage of a compressed layer: what each stored head keeps, with no padding.

Stored row r (r = b * S + s, S stored heads per batch element) keeps `offsets[r+1] - offsets[r]` entries at
prompt positions `positions[offsets[r]:offsets[r+1]]`; rows that keep the same number of entries form a `Run`,
stored as `[R, n + room, d]` keys and values (rows sorted by length once, at `store`, so that each distinct
length is one run: one run per layer when budgets are uniform). Tokens after the prompt are written in place
after each row's kept entries, in room that doubles when full (amortized O(1) copies per token, no `torch.cat`
of the cache); where several stored rows read one KV head (`gqa="query"` with GQA) they are stored once per KV
head instead, apart (a long generation must not outgrow the full cache).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from headprof.runtime.layers import BaseLayer, CacheStats, LayerPlan

_MIN_RECENT = 16  # first capacity of the recent part, in tokens


@dataclass
class Run:
    """Stored rows that keep `length` entries each, positions `first:end` of the rows sorted by length (r = b * S
    + s sorted stably, so uniform budgets keep row order): keys and values `[R, length + room, d]`. Where the
    layer stores one row per KV head, the tokens after the prompt follow each row's kept entries in place, so
    that one attention call reads a run's whole cache."""

    first: int
    end: int
    length: int
    keys: torch.Tensor
    values: torch.Tensor


class KeptEntries(BaseLayer):
    """A compressed layer's storage: the kept entries of every stored row in runs, the tokens after the prompt,
    and what they cost in bytes. `store` replaces what is held (compression; H2O's eviction; stacking)."""

    def __init__(self, plan: LayerPlan, stats: CacheStats, index: int = 0):
        super().__init__(plan, stats, index)
        self.offsets: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.entry_scores: torch.Tensor | None = None  # per stored entry, for a method that evicts while decoding
        self.lengths: list[int] = []  # entries kept by each stored row (= offsets.diff(), on the host)
        self.runs: list[Run] = []
        self._order: torch.Tensor | None = None  # the rows sorted by length (None: already in that order)
        self._inverse: torch.Tensor | None = None  # where each row is in that order
        self.n_recent = 0  # tokens after the prompt
        self.capacity = 0  # room for them: in every run's rows, or in the separate buffer
        self._recent: tuple[torch.Tensor, torch.Tensor] | None = None  # [B, Hkv, capacity, d] when S > Hkv
        self._shared = False  # a fork's twin reads the same buffers: copy them before writing

    @property
    def n_stored(self) -> int:
        """Stored rows per batch element: KV heads, or query heads in the query layout."""
        return self.plan.budgets.numel()

    @property
    def recent_apart(self) -> bool:
        """Whether the tokens after the prompt are stored apart, once per KV head (several stored rows per KV
        head), instead of after each row's kept entries."""
        return self._recent is not None

    @property
    def flat_keys(self) -> torch.Tensor:
        """Kept keys of every stored row, concatenated `[N, d]` (row r owns `offsets[r]:offsets[r+1]`)."""
        return self._flat([run.keys[:, : run.length].reshape(-1, run.keys.shape[-1]) for run in self.runs])

    @property
    def flat_values(self) -> torch.Tensor:
        return self._flat([run.values[:, : run.length].reshape(-1, run.values.shape[-1]) for run in self.runs])

    def _flat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The runs' kept entries (in sorted row order) back in row order."""
        stored = concat(parts)
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
        held = concat([part[:, run.length : run.length + self.n_recent] for part, run in zip(parts, self.runs)])
        batch = len(self.lengths) // self.n_stored
        return self.in_row_order(held, 0).reshape(batch, self.n_kv, self.n_recent, held.shape[-1])

    def in_sorted_order(self, rows: torch.Tensor, dim: int) -> torch.Tensor:
        return rows if self._order is None else rows.index_select(dim, self._order)

    def in_row_order(self, rows: torch.Tensor, dim: int) -> torch.Tensor:
        return rows if self._order is None else rows.index_select(dim, self._inverse)

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
            keys = self.in_sorted_order(key_states.reshape(-1, *key_states.shape[2:]), 0)
            values = self.in_sorted_order(value_states.reshape(-1, *value_states.shape[2:]), 0)
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
            self.runs.append(Run(first, end, length, keys, values))
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

    def fold_recent(self) -> None:
        """Make the tokens after the prompt kept entries of every stored row (after the row's own, at their
        positions), so that the layer holds no recent part. Caches whose prompts differ in what came after their
        compressed part can then be stacked (a sweep's KVzip caches, their question fed on top, beside caches of
        the whole prompt); attention reads the same entries either way. Not for a method that evicts while
        decoding (its entries carry scores)."""
        n = self.n_recent
        if n == 0:
            return
        rows, device = len(self.lengths), self.offsets.device
        lengths = self.offsets.diff()
        step = torch.arange(rows + 1, device=device) * n
        offsets = self.offsets + step
        row = torch.repeat_interleave(torch.arange(rows, device=device), lengths, output_size=self.positions.numel())
        kept = torch.arange(row.numel(), device=device) + step[row]  # where each kept entry moves
        tail = (offsets[:-1, None] + lengths[:, None] + torch.arange(n, device=device)[None, :]).reshape(-1)
        positions = torch.arange(self.seen - n, self.seen, device=device, dtype=self.positions.dtype).repeat(rows)
        parts = []
        for flat, recent in ((self.flat_keys, self.recent_keys), (self.flat_values, self.recent_values)):
            folded = flat.new_empty(flat.shape[0] + rows * n, flat.shape[-1])
            folded[kept] = flat
            folded[tail] = self.per_stored(recent).reshape(-1, flat.shape[-1])
            parts.append(folded)
        folded_positions = self.positions.new_empty(parts[0].shape[0])
        folded_positions[kept] = self.positions
        folded_positions[tail] = positions
        self.store(*parts, folded_positions, offsets, lengths=[length + n for length in self.lengths])

    def per_stored(self, states: torch.Tensor) -> torch.Tensor:
        """`[B, Hkv, n, d]` (how the recent part is stored) -> `[B, S, n, d]` (one copy per stored head)."""
        return states.repeat_interleave(self.n_stored // self.n_kv, dim=1)

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
        needed = sum(map(nbytes, dense)) + sum(nbytes(used) for _, used in buffers)
        metadata = (self.offsets, self.positions, self.entry_scores)
        index = sum(t.numel() * t.element_size() for t in metadata if t is not None)
        return allocated, needed, index

    def reserved_bytes(self) -> int:
        """Room for tokens not generated yet (at most as much as the tokens after the prompt take)."""
        return sum(nbytes(buffer) - nbytes(used) for buffer, used in self._buffers() if buffer.shape != used.shape)


def nbytes(tensor: torch.Tensor) -> int:
    """Bytes the elements of `tensor` take (not its storage's)."""
    return tensor.numel() * tensor.element_size()


def concat(parts: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """`torch.cat` that hands back a single part as it is (no copy)."""
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
