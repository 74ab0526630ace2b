"""``hash``: fixed hash routing (Roller et al. 2021, Hash Layers).

Each token goes to the expert ``hash(token id, seed) mod E``, the same at every step and
layer; no router, no aux loss, gate 1. The token ids come from the context (``ctx.tokens``);
where a context has none (AdaTape's tape rows, a bare call), the position is hashed instead.
"""

from __future__ import annotations

import dataclasses

import torch

from ponder.models.experts.routing import RoutedFFN, choice_major, grid_shape
from ponder.models.kinds import FFNS
from ponder.tasks.base import knob

_MASK = 0xFFFFFFFF


def mix(v: torch.Tensor, seed: int) -> torch.Tensor:
    """A 32-bit integer mix of v [n] long (two xor-shift-multiply rounds) → [n] long ≥ 0."""
    v = (v + seed * 0x9E3779B9) & _MASK
    for _ in range(2):
        v = ((v ^ (v >> 16)) * 0x45D9F3B) & _MASK
    return v ^ (v >> 16)


@dataclasses.dataclass(frozen=True)
class HashKnobs:
    n_experts: int = knob(8, lo=1, hi=256, help="routed experts")
    d_expert: int = knob(0, lo=0, hi=65536, help="hidden width of an expert (0: d_ff)")
    seed: int = knob(0, lo=0, hi=2**31 - 1, help="salt of the hash")
    shared: int = knob(0, lo=0, hi=16, help="shared experts run on every token")


@FFNS.register
class Hash(RoutedFFN):
    """Experts picked by a fixed hash of the input token id."""

    name = "hash"
    paper = "Roller et al. 2021, Hash Layers For Large Sparse Models"
    Knobs = HashKnobs
    has_router = False

    def route(self, x, idx, ctx, rows):
        flat = idx if rows is None else rows.index_select(0, idx)
        B, L = grid_shape(ctx, x.shape[0], rows)
        if ctx is not None and ctx.tokens is not None and ctx.tokens.shape == (B, L):
            ids = ctx.tokens.reshape(-1).index_select(0, flat)
        else:
            ids = flat % L
        expert = mix(ids.long(), self.knobs.seed) % self.n_experts
        gate = torch.ones(idx.numel(), dtype=x.dtype, device=x.device)
        return choice_major(idx, expert[None], gate[None]), None
