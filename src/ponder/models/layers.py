"""Transformer building blocks: norms, positions, pre-norm attention block, MLP, readout head.

Every block works on ``h [B, L, D]`` with an :class:`AttnContext` built once per forward
(key mask, causal flag, rotary tables), so the engine can apply any block at any step.
Initialisation is PyTorch's default on purpose: N(0, 0.02) left ``list_rank`` stuck on a
saddle (reference/measured.md).

The attention module is split into ``queries`` / ``keys_values`` / ``attend`` / ``out`` so a
compacted execution (queries from the active tokens only, keys/values from every token of the
sequence) can reuse the same weights without re-implementing them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder import kernels
from ponder.errors import ConfigError
from ponder.models.norm import rms_norm


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain; ``eps`` inside the root keeps ×1e3 inputs finite."""

    def __init__(self, *, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] → [..., D]."""
        return rms_norm(x, self.weight, self.eps)  # fused: saves x and the row scale only


def make_norm(kind: str, d_model: int) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(d_model=d_model)
    if kind == "layernorm":
        return nn.LayerNorm(d_model)
    raise ConfigError(f"unknown norm {kind!r}; norms: rmsnorm, layernorm")


@dataclass
class AttnContext:
    """What every attention call of one forward pass shares.

    attn_mask  [B, 1, L, L] bool  True where query i may attend to key j (padding, causality;
                                  a token may always attend to itself so no row is empty)
    key_mask   [B, L] bool        True at real tokens
    causal     bool
    rope       (cos, sin) each [L, head_dim/2], or None without rotary positions
    """

    attn_mask: torch.Tensor
    key_mask: torch.Tensor
    causal: bool
    rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    @staticmethod
    def build(mask: torch.Tensor, *, causal: bool, rope: "Optional[Rotary]" = None) -> "AttnContext":
        """mask [B, L] bool → the context for one forward pass."""
        B, L = mask.shape
        allowed = mask[:, None, None, :].expand(B, 1, L, L)
        eye = torch.eye(L, dtype=torch.bool, device=mask.device)
        allowed = allowed | eye
        if causal:
            allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
        tables = rope.tables(L, mask.device) if rope is not None else None
        return AttnContext(attn_mask=allowed, key_mask=mask, causal=causal, rope=tables)


class Rotary(nn.Module):
    """Rotary position tables (no parameters): rotate pairs of (q, k) channels by position."""

    def __init__(self, *, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary positions need an even head dimension, got {head_dim}")
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def tables(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (cos, sin), each [length, head_dim/2]."""
        t = torch.arange(length, device=device, dtype=torch.float32)
        angles = torch.outer(t, self.inv_freq.to(device))
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, hd] with cos/sin [L, hd/2] → rotated x (pairs are (first half, second half))."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (at inference,
    when possible, through the compiled kernel of :mod:`ponder.kernels`; see ``compiled_ok``)."""

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.o = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def queries(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """x [B, L, D] (normed) → q [B, H, L, hd], rotated when the context has rotary tables."""
        q = self._heads(self.q(x))
        if ctx.rope is not None:
            q = apply_rotary(q, *ctx.rope)
        return q

    def keys_values(self, x: torch.Tensor, ctx: AttnContext) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, D] (normed) → (k, v), each [B, H, L, hd]."""
        k, v = self.kv(x).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)
        if ctx.rope is not None:
            k = apply_rotary(k, *ctx.rope)
        return k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               attn_mask: torch.Tensor) -> torch.Tensor:
        """q [B, H, Lq, hd], k/v [B, H, Lk, hd], attn_mask [B, 1, Lq, Lk] bool → [B, Lq, D]."""
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        B, H, Lq, hd = y.shape
        return self.o(y.transpose(1, 2).reshape(B, Lq, H * hd))

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """x [B, L, D] (normed) → [B, L, D]."""
        k, v = self.keys_values(x, ctx)
        if self.compiled_ok(x, ctx):
            return self._attend_compiled(x, k, v, ctx)
        return self.attend(self.queries(x, ctx), k, v, ctx.attn_mask)

    def compiled_ok(self, x: torch.Tensor, ctx: AttnContext) -> bool:
        """Whether this call may run the compiled attention of :mod:`ponder.kernels`: without
        autograd or dropout, float32 on the CPU, a supported head size, no padded tokens (a pad
        query's row of the mask differs; only causality or nothing to mask). The compacted steps
        use the same kernel, so full-depth and compacted runs compare kernel for kernel."""
        return (not torch.is_grad_enabled() and (self.dropout == 0.0 or not self.training)
                and x.dtype == torch.float32 and x.device.type == "cpu"
                and self.head_dim in kernels.HEAD_DIMS and kernels.load()
                and (ctx.attn_mask is None or bool(ctx.key_mask.all())))

    def _attend_compiled(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         ctx: AttnContext) -> torch.Tensor:
        """x [B, L, D], k/v [B, H, L, hd] → [B, L, D]; every token a query of its sequence."""
        B, L, D = x.shape
        q = self.queries(x, ctx).transpose(1, 2)  # [B, L, H, hd]: the rows the kernel takes
        starts = torch.arange(0, B * L + 1, L, device=x.device)
        pos = torch.arange(B * L, device=x.device) % L if ctx.causal else None
        y = kernels.varlen_attention(q.reshape(B * L, D).contiguous(), k, v, starts, pos=pos)
        return self.o(y.view(B, L, D))


class MLP(nn.Module):
    """Position-wise feed-forward: Linear → GELU → Linear."""

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] → [..., D] (works on a flat [T, D] buffer of gathered tokens too)."""
        return self.drop(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-norm Transformer block: ``h + attn(norm(h))`` then ``+ mlp(norm(·))``."""

    def __init__(self, *, d_model: int, n_heads: int, d_ff: int, norm: str = "rmsnorm",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, d_model)
        self.attn = Attention(d_model=d_model, n_heads=n_heads, dropout=dropout)
        self.norm2 = make_norm(norm, d_model)
        self.mlp = MLP(d_model=d_model, d_ff=d_ff, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """h [B, L, D] → [B, L, D]."""
        h = h + self.drop(self.attn(self.norm1(h), ctx))
        return h + self.mlp(self.norm2(h))


class Group(nn.Module):
    """G blocks applied in order (one recurrent step of the core, or one layer of a stack)."""

    def __init__(self, *, n_blocks: int, d_model: int, n_heads: int, d_ff: int,
                 norm: str = "rmsnorm", dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model=d_model, n_heads=n_heads, d_ff=d_ff, norm=norm,
                                          dropout=dropout) for _ in range(n_blocks))

    def forward(self, h: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """h [B, L, D] → [B, L, D]."""
        for block in self.blocks:
            h = block(h, ctx)
        return h


_PART = re.compile(r"[A-Za-z0-9_]+")


def token_parts(tokens: list[str]) -> tuple[list[str], torch.Tensor]:
    """Split compound tokens into slotted parts: ``"8>13"`` → ``0:8``, ``1:13``.

    A token with two or more alphanumeric runs is compound; part ``k`` of it is named
    ``"k:<run>"`` (the slot keeps ``8>13`` and ``13>8`` apart). Returns the sorted part names
    and ``table [V, S]`` long: 1 + the index of token v's part in slot s, 0 where none
    (atomic tokens such as ``"5"`` or ``"<pad>"`` have no parts).
    """
    split = [_PART.findall(t) for t in tokens]
    split = [runs if len(runs) >= 2 else [] for runs in split]
    names = sorted({f"{k}:{r}" for runs in split for k, r in enumerate(runs)})
    index = {name: i + 1 for i, name in enumerate(names)}
    slots = max((len(runs) for runs in split), default=0)
    table = torch.zeros(len(tokens), max(1, slots), dtype=torch.long)
    for v, runs in enumerate(split):
        for k, r in enumerate(runs):
            table[v, k] = index[f"{k}:{r}"]
    return names, table


class Embedding(nn.Module):
    """Token embedding (plus, optionally, its parts' embeddings) plus learned absolute
    positions (``positions="learned"``) or nothing.

    Part embeddings (:meth:`attach_parts`, ``ModelConfig.token_parts``): a compound token
    such as list_rank's edge ``8>13`` is embedded as ``tok[8>13] + part[0:8] + part[1:13]``,
    so every edge leaving node 8 shares one learned vector for "source 8". With opaque ids
    alone each of the ~270 edge tokens must learn its source and target codes on its own,
    and list_rank stalled at ~0.57 valid accuracy (reference model and ponder's alike).
    """

    def __init__(self, *, vocab_size: int, d_model: int, positions: str, max_len: int) -> None:
        super().__init__()
        if positions not in ("learned", "rotary", "none"):
            raise ConfigError(f"unknown positions {positions!r}; positions: learned, rotary, none")
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.max_len = max_len
        self.part: Optional[nn.Embedding] = None

    def attach_parts(self, tokens: list[str]) -> None:
        """Add part embeddings for the vocabulary ``tokens`` (id order); call before training."""
        if len(tokens) != self.tok.num_embeddings:
            raise ConfigError(f"token_parts: {len(tokens)} token strings for a vocabulary of "
                              f"{self.tok.num_embeddings}")
        names, table = token_parts(tokens)
        # row 0 is "no part": zero and never updated (padding_idx)
        self.part = nn.Embedding(len(names) + 1, self.tok.embedding_dim, padding_idx=0)
        self.register_buffer("part_table", table)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] long → [B, L, D]."""
        x = self.tok(tokens)
        if self.part is not None:
            x = x + self.part(self.part_table[tokens]).sum(-2)
        if self.pos is not None:
            L = tokens.shape[1]
            if L > self.max_len:
                raise ConfigError(f"sequence length {L} exceeds max_len {self.max_len}")
            x = x + self.pos(torch.arange(L, device=tokens.device))[None]
        return x


class Readout(nn.Module):
    """Coda (C blocks) → norm → linear head: the one readout used after any step."""

    def __init__(self, *, coda: nn.Module, d_model: int, vocab_size: int, norm: str) -> None:
        super().__init__()
        self.coda = coda
        self.norm = make_norm(norm, d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, h: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        """h [B, L, D] → logits [B, L, V]."""
        return self.head(self.norm(self.coda(h, ctx)))

