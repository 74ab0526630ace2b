"""The key/value cache of incremental decoding: one buffer per block slot, one column per token.

A *slot* is one place a block runs in the computation of a token: a prelude block, block g
of core step n (a recurrent model's shared core has one slot per step: its keys differ from
step to step), a coda block, or a coda block of the self-speculative draft's own readout.
Column c of every slot belongs to the same token. Columns are shared by the batch: sample b's
pads (a shorter prompt) and finished samples' columns are *holes* — columns whose
``valid[b, c]`` is False, never attended to — so samples may advance by different numbers of
tokens per call while every slot stays one rectangular buffer.

    k, v      per slot [B, H, capacity, hd]
    valid     [B, capacity] bool   column c of sample b is a real token
    position  [B, capacity] long   the token's position in its own sequence (embedding, rope)
    length    per slot: columns written so far (a slot may lag behind: the self-speculative
              verifier fills the deep slots of columns the draft opened)
"""

from __future__ import annotations

from typing import Hashable, Optional

import torch


class KVCache:
    """Per-slot key/value buffers that grow by doubling (amortised O(1) per column)."""

    def __init__(self, *, batch: int, n_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, capacity: int = 64) -> None:
        self.B, self.H, self.hd = batch, n_heads, head_dim
        self.dtype, self.device = dtype, device
        self.capacity = max(1, capacity)
        self.k: dict[Hashable, torch.Tensor] = {}
        self.v: dict[Hashable, torch.Tensor] = {}
        self.length: dict[Hashable, int] = {}
        self.columns = 0  # columns opened (the longest slot can hold at most this many)
        self.holes = False  # some opened column is not a real token (then queries need masks)
        self.valid = torch.zeros(batch, self.capacity, dtype=torch.bool, device=device)
        self.position = torch.zeros(batch, self.capacity, dtype=torch.long, device=device)
        self.next_position = torch.zeros(batch, dtype=torch.long, device=device)

    # -- columns --------------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        cap = self.capacity
        while cap < need:
            cap *= 2
        def wider(t: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = cap - shape[dim]
            return torch.cat([t, t.new_zeros(shape)], dim)
        self.valid, self.position = wider(self.valid, 1), wider(self.position, 1)
        for slot in list(self.k):
            self.k[slot], self.v[slot] = wider(self.k[slot], 2), wider(self.v[slot], 2)
        self.capacity = cap

    def open(self, valid: Optional[torch.Tensor], T: Optional[int] = None) -> tuple[int, torch.Tensor]:
        """Open ``T`` new columns; ``valid [B, T]`` marks the real tokens among them (each
        sample's real tokens take its next positions in order; None: all T are real, the
        common case of batch-1 decoding, without the mask arithmetic). → (first column c0,
        positions [B, T] long)."""
        if valid is None:
            if T is None:
                raise ValueError("open(None) needs T")
        else:
            T = valid.shape[1]
        c0 = self.columns
        self._grow(c0 + T)
        if valid is None:
            pos = self.next_position[:, None] + torch.arange(T, device=self.device)
            self.valid[:, c0:c0 + T] = True
            self.next_position = self.next_position + T
        else:
            pos = self.next_position[:, None] + valid.long().cumsum(1) - 1
            pos = torch.where(valid, pos, torch.zeros_like(pos))
            self.valid[:, c0:c0 + T] = valid
            self.holes = self.holes or not bool(valid.all())
            self.next_position = self.next_position + valid.long().sum(1)
        self.position[:, c0:c0 + T] = pos
        self.columns = c0 + T
        return c0, pos

    def truncate(self, columns: int) -> None:
        """Forget every column from ``columns`` on (in every slot)."""
        columns = min(columns, self.columns)
        if columns == self.columns:
            return
        # positions of the forgotten real tokens are free again
        self.next_position = self.next_position - self.valid[:, columns:self.columns].sum(1)
        self.valid[:, columns:] = False
        self.columns = columns
        for slot in self.length:
            self.length[slot] = min(self.length[slot], columns)

    # -- slots ----------------------------------------------------------------------------
    def write(self, slot: Hashable, c0: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, T, hd] into columns ``c0 .. c0+T`` of ``slot`` (which must hold
        exactly ``c0`` columns: slots fill in order)."""
        T = k.shape[2]
        if slot not in self.k:
            shape = (self.B, self.H, self.capacity, self.hd)
            self.k[slot] = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v[slot] = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.length[slot] = 0
        if self.length[slot] != c0:
            raise RuntimeError(f"cache slot {slot!r} holds {self.length[slot]} columns, "
                               f"cannot write at column {c0}")
        self.k[slot][:, :, c0:c0 + T] = k
        self.v[slot][:, :, c0:c0 + T] = v
        self.length[slot] = c0 + T

    def keys(self, slot: Hashable, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of columns ``0 .. upto`` of ``slot``, each [B, H, upto, hd]."""
        if slot not in self.k:
            shape = (self.B, self.H, 0, self.hd)
            empty = torch.zeros(shape, dtype=self.dtype, device=self.device)
            return empty, empty
        return self.k[slot][:, :, :upto], self.v[slot][:, :, :upto]

    def filled(self, slot: Hashable) -> int:
        return self.length.get(slot, 0)
