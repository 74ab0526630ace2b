"""CoLT5's conditional feed-forward (Ainslie et al. 2023, arXiv:2303.09752), an FFN kind
(``model.ffn.kind: colt5``): a light FFN for every token plus a heavy FFN for the routed
tokens of each sequence only,

    y = FF_light(x) + s̃ ⊙ FF_heavy(x_routed)      (scattered back to the routed rows)

Routing: a linear score ``s = x·w`` per token; per sequence, the soft top-k of the scores by
iterative coordinate descent (Wright et al.'s dual of the entropy-regularised top-k LP:
``max_{0≤z≤1, Σz=k} s·z + ε·H(z)``, ε annealed from ``eps_init`` to ``eps``), run for
``k·fetch_ratio`` tokens ("a bit slightly higher k", as the public code does); the k tokens of
highest score take the heavy branch, scaled by their soft score s̃ — through a
straight-through estimator by default (forward 1, backward ∂s̃), as in the public code.

The heavy branch's hidden width is the model's ``d_ff``; the light one's ``light_ratio·d_ff``
(CoLT5: light ½·d_model, heavy 4·d_model, i.e. ⅛ of the heavy width). CoLT5's light local /
heavy routed attention is the attention kind ``colt5`` (:mod:`ponder.models.colt5_attention`);
both route with :func:`soft_route`.

Which rows route: the rows that really enter the block (``ctx.row_weight``), so dense and
compacted execution pick the same tokens. Top-k over the sequence reads every position:
not causal. FLOPs: light FFN and router for every entering token, the heavy FFN charged to
the routed ones only (``ctx.count_row_flops``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.models.kinds import FFNS
from ponder.models.layers import FFN, AttnContext
from ponder.models.routers._select import capacity_k, top_k_mask
from ponder.tasks.base import knob


@dataclass(frozen=True)
class SoftRouteKnobs:
    """The knobs of CoLT5's routing (shared by the FFN and the attention kind)."""

    capacity: float = knob(0.125, lo=0.001, hi=1.0,
                           help="fraction of each sequence's tokens routed to the heavy branch")
    iters: int = knob(20, lo=1, hi=1000, help="coordinate-descent iterations of the soft top-k")
    eps: float = knob(0.03, lo=1e-4, hi=100.0, help="final entropy weight ε of the soft top-k")
    eps_init: float = knob(4.0, lo=1e-4, hi=100.0, help="initial ε (annealed down to eps)")
    eps_decay: float = knob(0.7, lo=0.01, hi=1.0, help="ε ← max(ε·eps_decay, eps) per iteration")
    fetch_ratio: float = knob(1.125, lo=1.0, hi=8.0, help="the soft top-k runs for k·fetch_ratio tokens")
    straight_through: bool = knob(True, help="scale the heavy output by 1 forward, ∂s̃ backward")


@dataclass(frozen=True)
class CoLT5Knobs(SoftRouteKnobs):
    light_ratio: float = knob(0.125, lo=0.001, hi=4.0, help="light FFN width / d_ff")


def soft_top_k(s: torch.Tensor, valid: torch.Tensor, k: torch.Tensor, *, iters: int, eps: float,
               eps_init: float, eps_decay: float) -> torch.Tensor:
    """Soft top-k by coordinate descent on the dual of the entropy-regularised LP.

    s [B, L] scores, valid [B, L] bool, k [B] float (≤ the valid count) → z [B, L] in [0, 1]
    (0 at invalid positions) with Σ_l z ≈ k per sequence (exact after each ``a`` update, at
    that ε); z → the hard top-k as ε → 0.
    Dual variables: a [B, 1] for Σz = k, b [B, L] ≤ 0 for z ≤ 1; primal z = exp((s+a+b)/ε).
    """
    very_low = torch.finfo(s.dtype).min / 4
    s = s.masked_fill(~valid, very_low)
    log_k = torch.log(k.to(s.dtype).clamp(min=1e-12))[:, None]
    b = torch.zeros_like(s) - s.clamp(min=0)  # any start with b ≤ 0; a is set first
    e = max(eps_init, eps)
    a = s.new_zeros(s.shape[0], 1)
    for _ in range(iters):
        # a: the sum constraint exactly met given b;  b: the box constraint given a
        a = e * (log_k - torch.logsumexp(((s + b) / e).masked_fill(~valid, very_low), -1, keepdim=True))
        b = -F.relu(s + a)
        e = max(e * eps_decay, eps)
    return torch.exp((s + a + b) / e).masked_fill(~valid, 0.0)


def soft_route(score: torch.Tensor, valid: torch.Tensor,
               knobs: SoftRouteKnobs) -> tuple[torch.Tensor, torch.Tensor]:
    """CoLT5's routing of one score per token: score [B, L], valid [B, L] bool (the
    candidates) → (chosen [B, L] bool: per sequence the ``k = ⌈capacity·n⌉`` candidates of
    highest score, ties to the earlier position; mult [B, L]: the soft top-k score s̃, run for
    ``k·fetch_ratio`` tokens — straight through, 1 forward and ∂s̃ backward, by default)."""
    n = valid.sum(1)
    k = capacity_k(knobs.capacity, n)
    fetch = torch.minimum(torch.ceil(k.to(torch.float64) * knobs.fetch_ratio - 1e-9).long(), n)
    z = soft_top_k(score, valid, fetch, iters=knobs.iters, eps=knobs.eps,
                   eps_init=knobs.eps_init, eps_decay=knobs.eps_decay)
    if knobs.straight_through:
        z = z - z.detach() + 1.0
    return top_k_mask(score, valid, k), z


@FFNS.register
class CoLT5FFN(FFN):
    """Light FFN for all tokens + heavy FFN for the soft-top-k routed tokens of each sequence."""

    name = "colt5"
    causal = False
    paper = "Ainslie et al. 2023, CoLT5 (arXiv:2303.09752), conditional feed-forward"
    Knobs = CoLT5Knobs

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.0, knobs: Any = None) -> None:
        super().__init__()
        self.knobs: CoLT5Knobs = knobs or CoLT5Knobs()
        light = max(1, round(self.knobs.light_ratio * d_ff))
        self.light_up, self.light_down = nn.Linear(d_model, light), nn.Linear(light, d_model)
        self.heavy_up, self.heavy_down = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.route = nn.Linear(d_model, 1)
        self.drop = nn.Dropout(dropout)
        self.d_model, self.light, self.heavy = d_model, light, d_ff

    def routing(self, x: torch.Tensor, ctx: Optional[AttnContext],
                rows: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """x [R, D] → (indices of the routed rows [T] long, their multiplier [T])."""
        R = x.shape[0]
        s = self.route(x).squeeze(-1)
        # place every row in a [sequences, positions] grid by its flat token index
        if ctx is not None and (rows is not None or R == ctx.key_mask.numel()):
            B, L = ctx.key_mask.shape
            where = torch.arange(R, device=x.device) if rows is None else rows
            enter = ctx.row_weight(rows, R, x.dtype) > 0
        else:  # rows of unknown origin (no context): one sequence
            B, L, where = 1, R, torch.arange(R, device=x.device)
            enter = torch.ones(R, dtype=torch.bool, device=x.device)
        grid_s = s.new_zeros(B * L).index_copy(0, where, s).view(B, L)
        valid = torch.zeros(B * L, dtype=torch.bool, device=x.device).index_copy(0, where, enter).view(B, L)
        chosen, z = soft_route(grid_s, valid, self.knobs)
        chosen = chosen.view(-1).index_select(0, where)
        idx = chosen.nonzero().view(-1)
        mult = z.view(-1).index_select(0, where.index_select(0, idx))
        return idx, mult

    def forward(self, x: torch.Tensor, ctx: Optional[AttnContext] = None,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [R, D] (normed), rows [R] flat token indices or None → [R, D]."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        out = self.light_down(F.gelu(self.light_up(x)))
        idx, mult = self.routing(x, ctx, rows)
        if idx.numel():
            heavy = self.heavy_down(F.gelu(self.heavy_up(x.index_select(0, idx))))
            out = out.index_add(0, idx, mult[:, None] * heavy)
        if ctx is not None and (rows is not None or x.shape[0] == ctx.key_mask.numel()):
            # the heavy branch's FLOPs, charged to the routed rows only
            per_row = x.new_zeros(x.shape[0]).index_fill(0, idx, 4.0 * self.d_model * self.heavy)
            ctx.count_row_flops(rows, per_row)
        return self.drop(out).view(shape)

    def flops_per_token(self) -> float:
        """Light FFN and router per entering row (the heavy branch is counted per routed row
        in ``forward``)."""
        return 4.0 * self.d_model * self.light + 2.0 * self.d_model
