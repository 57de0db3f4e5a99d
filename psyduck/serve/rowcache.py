"""`RowCache`: a KV cache whose rows are sequences of different lengths, for a batch that changes.

The generation loop's `KVCache` (psyduck/generate/) keeps one `length` for all its rows: every row
started together and grows together. A server's batch is not like that: requests join and leave
between steps, so row 0 may hold 300 tokens and row 1 just 12. Here each row has its own length;
a decode step feeds one new token per row, written at that row's own position, and gives the
model (through `keep`) the mask that lets each row attend to its own keys only. The model reads
`cache.length` as per-row starts, so every row's positions are its own (psyduck/model.py).

Rows are kept packed: the active rows are 0..active-1, and a row that leaves is filled by the last
one, so a step works on plain slices. Buffers grow (doubling) as rows join; the prompts that join
at one step are prefilled together into a `KVCache` (right-padded, one row each) and each is
copied in with `put`, only as far as its own length.
"""

from __future__ import annotations

import torch

from psyduck.generate import KVCache


class RowLayer:
    """One block's view of the `RowCache`: what the model's attention calls `append` on."""

    def __init__(self, owner: RowCache, i: int) -> None:
        self.owner, self.i = owner, i

    @property
    def keep(self) -> torch.Tensor | None:
        return self.owner.keep

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one new token's k, v (B, Hkv, 1, hs) per row at that row's length; return (B, Hkv, end, hs)."""
        owner = self.owner
        if k.shape[2] != 1:
            raise ValueError("a RowCache takes one token per row per step; prefill rows with a KVCache and `put`")
        rows = torch.arange(k.shape[0], device=k.device)
        at = owner.lengths[: k.shape[0]]
        owner.k[self.i][rows, :, at] = k[:, :, 0]
        owner.v[self.i][rows, :, at] = v[:, :, 0]
        end = owner.end
        return owner.k[self.i][: k.shape[0], :, :end], owner.v[self.i][: k.shape[0], :, :end]


class RowCache:
    """Keys and values of `active` rows of different lengths; `lengths[r]` counts row r's tokens."""

    def __init__(self, n_layer: int, kv_heads: int, block_size: int, head_size: int, device: torch.device, dtype: torch.dtype) -> None:
        self.shape = (kv_heads, block_size, head_size)
        self.device, self.dtype = device, dtype
        self.k: list[torch.Tensor] = [self._empty(0) for _ in range(n_layer)]
        self.v: list[torch.Tensor] = [self._empty(0) for _ in range(n_layer)]
        self.lengths = torch.zeros(0, dtype=torch.long, device=device)
        self.active = 0
        self.keep: torch.Tensor | None = None  # this step's mask (B, 1, 1, end), set by `begin_step`
        self.end = 0  # this step's key count: the longest row's length after the step

    def _empty(self, rows: int) -> torch.Tensor:
        return torch.zeros((rows, *self.shape), device=self.device, dtype=self.dtype)

    # -- the interface the model uses -----------------------------------------------------------
    @property
    def length(self) -> torch.Tensor:
        """The active rows' lengths (B,): the model starts each row's new positions there."""
        return self.lengths[: self.active]

    @length.setter
    def length(self, value: torch.Tensor) -> None:
        self.lengths[: self.active] = value

    def layer(self, i: int) -> RowLayer:
        return RowLayer(self, i)

    # -- rows joining, leaving, stepping --------------------------------------------------------
    def begin_step(self) -> None:
        """Before a decode step: each row will see its own keys, up to and including the new one."""
        seen = self.length + 1
        self.end = int(seen.max())
        self.keep = (torch.arange(self.end, device=self.device) < seen[:, None])[:, None, None, :]

    def put(self, prefilled: KVCache, source: int, length: int, copies: int = 1) -> list[int]:
        """Add `copies` rows holding the first `length` positions of row `source` of `prefilled`;
        returns their row numbers."""
        need = self.active + copies
        if need > self.lengths.shape[0]:
            self._grow(max(need, 2 * self.lengths.shape[0], 4))
        rows = slice(self.active, need)
        for i, layer in enumerate(prefilled.layers):
            self.k[i][rows, :, :length] = layer.k[source, :, :length]
            self.v[i][rows, :, :length] = layer.v[source, :, :length]
        self.lengths[rows] = length
        self.active = need
        return list(range(rows.start, rows.stop))

    def replace(self, row: int, prefilled: KVCache, source: int, length: int) -> None:
        """Make `row` hold the first `length` positions of row `source` of `prefilled` instead (a
        row whose window rolled)."""
        for i, layer in enumerate(prefilled.layers):
            self.k[i][row, :, :length] = layer.k[source, :, :length]
            self.v[i][row, :, :length] = layer.v[source, :, :length]
        self.lengths[row] = length

    def remove(self, row: int) -> int | None:
        """Free `row`; the last row moves into it. Returns the row number that moved (None if none)."""
        last = self.active - 1
        self.active = last
        if row == last:
            return None
        n = int(self.lengths[last])
        for buf in (*self.k, *self.v):
            buf[row, :, :n] = buf[last, :, :n]
        self.lengths[row] = n
        return last

    def _grow(self, rows: int) -> None:
        for bufs in (self.k, self.v):
            for i, old in enumerate(bufs):
                new = self._empty(rows)
                new[: old.shape[0]] = old
                bufs[i] = new
        lengths = torch.zeros(rows, dtype=torch.long, device=self.device)
        lengths[: self.lengths.shape[0]] = self.lengths
        self.lengths = lengths
