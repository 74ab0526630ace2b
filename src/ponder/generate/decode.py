"""Cached incremental decoding of a causal recurrent or stacked model.

The computation of one token, slot by slot (see :mod:`ponder.generate.cache`):

    embed → prelude blocks → core step 1 … step N (each: + e_n, then its group's blocks)
          → coda blocks → norm → head

Every block is run from its row-level pieces (``Block.kv_rows`` → the cache → ``q_rows`` →
attention over the cached keys → ``Block.finish``), so a chunk of T new tokens per sample
costs T rows per slot, not the whole prefix. With every token running N steps this is the
uncached forward of the model (tests: float64 logits of the whole generation against one
``model(tokens)`` over the prompt and the generated tokens).

Per-token exits at decode time (``rule``, :mod:`ponder.generate.exits`): after core step n
the rule may freeze a token. A frozen token keeps its exit state; the later core slots still
need its keys/values (later tokens attend to it), filled by

- ``fill="propagate"`` (CALM's choice, the engine's state copying): the keys/values of the
  exit state, computed by each later block's key/value projection only — the same as the
  uncached forward under a policy that halts the token at that step (test);
- ``fill="recompute"`` (the oracle): the token runs every step for the cache and only its
  prediction is read at the exit state (no compute saved: the upper bound of quality).

Exits are per sample in a batch: a frozen row skips the block's output projection and FFN
(the rows still running are gathered), and a step none of the chunk's rows runs costs only
the key/value projections.

Self-speculation splits the same computation at step E (:meth:`Decoder.extend` with
``depth=E`` and ``coda="draft"``; :meth:`Decoder.deepen` runs steps E+1..N of those columns
from the draft's states, reusing its keys/values of the first E steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ponder.errors import ConfigError
from ponder.generate.cache import KVCache
from ponder.models.layers import AttnContext, Block


class ExitRule(Protocol):
    """Decides, after core step n, which running tokens exit (``ponder.generate.exits``).

    ``__call__(n, max_steps, h [B, T, D], prev [B, T, D], logits, position [B, T])`` →
    ``[B, T] bool``; ``logits()`` is the token's readout at its current state ([B, T, V],
    computed lazily, without touching the cache).
    """

    needs_logits: bool

    def __call__(self, *, n: int, max_steps: int, h: torch.Tensor, prev: torch.Tensor,
                 logits, position: torch.Tensor) -> torch.Tensor: ...


FILLS = ("propagate", "recompute")


@dataclass
class Chunk:
    """What one call of :meth:`Decoder.extend` / :meth:`Decoder.deepen` returns.

    logits  [B, T, V]    next-token logits of the chunk's tokens (None: ``extend(head=False)``)
    steps   [B, T] long  core steps each token ran (0 at holes)
    flops   [B, T] | None  forward FLOPs each token used (blocks entered, key/value
                         projections of skipped slots, head); float64; None when the decoder
                         does not count
    h       [B, T, D]    the core's output states (the exit states; after step ``depth`` for
                         a draft chunk: what :meth:`Decoder.deepen` continues from)
    c0      int          the chunk's first column
    valid   [B, T] bool  real tokens of the chunk
    """

    logits: Optional[torch.Tensor]
    steps: torch.Tensor
    flops: Optional[torch.Tensor]
    h: torch.Tensor
    c0: int
    valid: torch.Tensor


def check_decodable(model: nn.Module) -> list[Block]:
    """Refuse a model the decoder cannot run (one ConfigError line); → its blocks in module
    order."""
    kind = getattr(model, "kind", None)
    if kind not in ("recurrent", "stacked"):
        raise ConfigError(f"cached decoding runs recurrent and stacked models, not {kind!r}")
    if not model.cfg.causal:
        raise ConfigError("cached decoding needs a causal model (model.causal=true)")
    if model.training:  # dropout would make the cached and the uncached passes differ
        raise ConfigError("cached decoding runs a model in eval mode (call model.eval())")
    blocks = [b for b in model.modules() if isinstance(b, Block)]
    if any(b.router is not None for b in blocks):
        raise ConfigError("cached decoding does not run block routers (model.router.kind=none)")
    for block in blocks:
        if block.attn.weights != "softmax":
            raise ConfigError(f"cached decoding runs softmax attention, not attention kind "
                              f"{block.spec.attention!r}")
    return blocks


class Decoder:
    """Cached decoding state of ``batch`` sequences of one model (eval mode, no autograd).

    extend(tokens [B, T], valid [B, T]) → :class:`Chunk`: append T columns and compute them.
    """

    def __init__(self, model: nn.Module, *, batch: int, capacity: int = 64,
                 count_flops: bool = True) -> None:
        self.blocks = check_decodable(model)
        self.model = model
        self.cfg = model.cfg
        self.N = model.cfg.max_steps
        first = self.blocks[0]
        self.H, self.hd = first.attn.n_heads, first.attn.head_dim
        head = model.readout.head
        self.dtype, self.device = head.weight.dtype, head.weight.device
        self.V = head.out_features
        self.cache = KVCache(batch=batch, n_heads=self.H, head_dim=self.hd, dtype=self.dtype,
                             device=self.device, capacity=capacity)
        self.B = batch
        self.counting = count_flops  # False: Chunk.flops is None (the speculative loops)
        D = self.cfg.d_model
        self.kv_flops = 4.0 * D * D  # the key/value projection of one row (2·D·2D)
        self.head_flops = 2.0 * D * self.V

    # -- pieces --------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens, pos [B, T] long → [B, T, D] (the model's Embedding at these positions)."""
        emb = self.model.embed
        x = emb.tok(tokens)
        if emb.part is not None:
            x = x + emb.part(emb.part_table[tokens]).sum(-2)
        if emb.pos is not None:
            # a position is below the number of opened columns: only then look at them
            if self.cache.columns > emb.max_len and int(pos.max()) >= emb.max_len:
                raise ConfigError(f"sequence length {int(pos.max()) + 1} exceeds max_len {emb.max_len}")
            x = x + emb.pos(pos)
        return x

    def rope(self, pos: torch.Tensor):
        """Rotary tables of the rows at ``pos [B, T]`` (each [B·T, hd/2]), or None."""
        rot = self.model.rotary
        if rot is None:
            return None
        angles = pos.reshape(-1).float()[:, None] * rot.inv_freq.to(pos.device)[None, :]
        return angles.cos(), angles.sin()

    def mask(self, c0: int, T: int) -> Optional[torch.Tensor]:
        """[B, 1, T, c0+T] bool: query t of the chunk (column c0+t) sees the real columns up
        to its own, and always itself (as the uncached forward's context); None when one
        query per sample sees every column (no holes): nothing to mask."""
        if T == 1 and not self.cache.holes:
            return None
        C = c0 + T
        cols = torch.arange(C, device=self.device)
        qcol = c0 + torch.arange(T, device=self.device)
        allowed = self.cache.valid[:, None, :C] & (cols[None, :] <= qcol[:, None])[None]
        allowed = allowed | (cols[None, :] == qcol[:, None])[None]
        return allowed[:, None]

    def block(self, block: Block, slot, x: torch.Tensor, c0: int, rope, mask: Optional[torch.Tensor],
              ctx: AttnContext, run: Optional[torch.Tensor] = None, write: bool = True) -> torch.Tensor:
        """One block at one slot: x [B, T, D] → [B, T, D]. Every row's keys/values go to the
        cache (``write``; else they are only attended to); the rows ``run [B, T]`` (None:
        all) are the block's queries and take its output, the others pass unchanged."""
        B, T, D = x.shape
        rows = x.reshape(B * T, D)
        y, kv = block.kv_rows(rows, rope)
        kv = kv.view(B, T, 2, self.H, self.hd).permute(2, 0, 3, 1, 4)
        if write:
            self.cache.write(slot, c0, kv[0], kv[1])
            k, v = self.cache.keys(slot, c0 + T)
        else:
            k0, v0 = self.cache.keys(slot, c0)
            k, v = torch.cat([k0, kv[0]], 2), torch.cat([v0, kv[1]], 2)
        if run is not None and not bool(run.any()):
            return x
        q = block.q_rows(y, rope).view(B, T, self.H, self.hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        a = a.transpose(1, 2).reshape(B * T, D)
        if run is None or bool(run.all()):
            return block.finish(rows, a, ctx).view(B, T, D)
        idx = run.reshape(-1).nonzero().squeeze(1)
        out = block.finish(rows.index_select(0, idx), a.index_select(0, idx), ctx, idx)
        return rows.index_copy(0, idx, out).view(B, T, D)

    def readout(self, h: torch.Tensor, c0: int, rope, mask: torch.Tensor, ctx: AttnContext,
                coda: str = "coda", write: bool = True, head: bool = True) -> Optional[torch.Tensor]:
        """h [B, T, D] → logits [B, T, V] through the coda (slots ``(coda, i)``) and head;
        ``write=False`` peeks (the chunk's keys/values are attended to, not cached);
        ``head=False`` only fills the coda's slots (→ None)."""
        for i, block in enumerate(self.model.readout.coda.blocks):
            h = self.block(block, (coda, i), h, c0, rope, mask, ctx, write=write)
        return self.model.readout.head(self.model.readout.norm(h)) if head else None

    def core(self, h: torch.Tensor, c0: int, rope, mask: torch.Tensor, ctx: AttnContext,
             valid: torch.Tensor, *, first: int, last: int, rule: Optional[ExitRule] = None,
             fill: str = "propagate", position: Optional[torch.Tensor] = None, coda: str = "coda"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Core steps ``first .. last`` of the chunk: h [B, T, D] → (state after the last
        step [B, T, D], steps each token ran as a query [B, T], steps it computed in full
        [B, T] (= the former, or every step under the oracle), exit states [B, T, D] under
        ``fill="recompute"`` (None otherwise))."""
        model = self.model
        if rule is None:  # every token runs every step: no per-step bookkeeping
            for n in range(first, last + 1):
                e = model.step_vector(n)
                x = h if e is None else h + e
                for g, block in enumerate(model.core_group(n).blocks):
                    x = self.block(block, ("core", n, g), x, c0, rope, mask, ctx)
                h = x
            steps = valid.long() * (last - first + 1)
            return h, steps, steps, None
        active = valid.clone()
        steps = torch.zeros_like(valid, dtype=torch.long)
        computed = torch.zeros_like(steps)
        exit_h = None
        everyone = True  # no row frozen yet: the blocks need no row masks
        for n in range(first, last + 1):
            prev = h
            running = active if fill == "propagate" else valid  # the oracle runs every token
            e = model.step_vector(n)
            if e is not None:
                x = h + e if everyone else torch.where(running[..., None], h + e, h)
            else:
                x = h
            run = None if everyone else running  # (nobody running: keys/values only)
            for g, block in enumerate(model.core_group(n).blocks):
                x = self.block(block, ("core", n, g), x, c0, rope, mask, ctx, run=run)
            h = x
            steps = steps + active.long()
            computed = computed + running.long()
            if rule is None or n == last or not bool(active.any()):
                continue

            def logits(state: torch.Tensor = h) -> torch.Tensor:
                return self.readout(state, c0, rope, mask, ctx, coda=coda, write=False)

            halt = rule(n=n, max_steps=self.N, h=h, prev=prev, logits=logits,
                        position=position) & active
            if fill == "recompute":
                exit_h = h.clone() if exit_h is None else exit_h
                exit_h = torch.where(halt[..., None], h, exit_h)
            elif bool(halt.any()):
                everyone = False
            active = active & ~halt
        if exit_h is not None:  # tokens that never exited read out their last state
            exit_h = torch.where(active[..., None], h, exit_h)
        return h, steps, computed, exit_h

    def count_flops(self, valid: torch.Tensor, n_keys: torch.Tensor, computed: torch.Tensor,
                    n_steps: int, prelude: bool) -> torch.Tensor:
        """Forward FLOPs per token [B, T] of one call: the prelude (when run), the core steps
        computed in full, key/value projections only at the others, the coda and the head
        (every block of a decodable model has the same spec: no routers)."""
        per_block = torch.as_tensor(self.blocks[0].flops_per_token(n_keys), dtype=torch.float64)
        G = self.cfg.core
        full = computed.double() * G + len(self.model.readout.coda.blocks)
        if prelude:
            full = full + len(self.model.prelude.blocks)
        kv_only = (n_steps - computed).double() * G
        return (full * per_block + kv_only * self.kv_flops + self.head_flops) * valid

    # -- the calls -----------------------------------------------------------------------
    @torch.no_grad()
    def extend(self, tokens: torch.Tensor, valid: Optional[torch.Tensor] = None, *,
               rule: Optional[ExitRule] = None, fill: str = "propagate",
               depth: Optional[int] = None, coda: str = "coda", head: bool = True) -> Chunk:
        """Append and compute T columns: tokens, valid [B, T] (None: all real) → :class:`Chunk`.

        ``depth``: run core steps 1..depth only (a draft; ``coda="draft"`` reads it out
        through the coda's own draft slots); ``rule``/``fill``: per-token exits;
        ``head=False``: no logits (``Chunk.logits`` is None; the coda's slots are still
        filled) — for a column whose prediction nobody reads."""
        if fill not in FILLS:
            raise ConfigError(f"unknown fill {fill!r}; fills: {', '.join(FILLS)}")
        B, T = tokens.shape
        if B != self.B:
            raise ConfigError(f"the decoder holds {self.B} sequences, got a batch of {B}")
        last = self.N if depth is None else int(depth)
        if not 1 <= last <= self.N:
            raise ConfigError(f"depth={depth} must lie in 1..{self.N}")
        valid = None if valid is None else valid.bool()
        c0, pos = self.cache.open(valid, T)
        if valid is None:
            valid = torch.ones_like(tokens, dtype=torch.bool)
        rope, mask = self.rope(pos), self.mask(c0, T)
        ctx = AttnContext(attn_mask=None, key_mask=valid, causal=True)
        h = self.embed(tokens, pos)
        for i, block in enumerate(self.model.prelude.blocks):
            h = self.block(block, ("prelude", i), h, c0, rope, mask, ctx)
        h, steps, computed, exit_h = self.core(h, c0, rope, mask, ctx, valid, first=1, last=last,
                                               rule=rule, fill=fill, position=pos, coda=coda)
        logits = self.readout(h, c0, rope, mask, ctx, coda=coda, head=head or exit_h is not None)
        if exit_h is not None:  # the oracle: the cache holds full depth, the answer the exit's
            logits = self.readout(exit_h, c0, rope, mask, ctx, coda=coda, write=False)
        flops = (self.count_flops(valid, self.n_keys(c0, T), computed, last, prelude=True)
                 if self.counting else None)
        return Chunk(logits=logits, steps=steps, flops=flops, h=h, c0=c0, valid=valid)

    @torch.no_grad()
    def deepen(self, h: torch.Tensor, c0: int, *, first: int) -> Chunk:
        """Core steps ``first .. N`` and the coda of columns ``c0 .. c0+T`` (opened by a draft
        :meth:`extend` with ``depth = first − 1``), from their states ``h [B, T, D]``."""
        B, T, _ = h.shape
        valid = self.cache.valid[:, c0:c0 + T]
        pos = self.cache.position[:, c0:c0 + T]
        rope, mask = self.rope(pos), self.mask(c0, T)
        ctx = AttnContext(attn_mask=None, key_mask=valid, causal=True)
        h, steps, computed, _ = self.core(h, c0, rope, mask, ctx, valid, first=first, last=self.N)
        logits = self.readout(h, c0, rope, mask, ctx)
        flops = (self.count_flops(valid, self.n_keys(c0, T), computed, self.N - first + 1,
                                  prelude=False) if self.counting else None)
        return Chunk(logits=logits, steps=steps, flops=flops, h=h, c0=c0, valid=valid)

    def n_keys(self, c0: int, T: int) -> torch.Tensor:
        """[B, T] float64: the real keys each of the chunk's queries sees (itself included)."""
        return self.cache.valid[:, :c0 + T].long().cumsum(1)[:, c0:].double().clamp(min=1)
