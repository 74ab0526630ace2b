"""Skip router: a per-token, per-block execute/skip gate ("learning to skip" layers; FlexiDepth,
Luo et al. 2025). Keys/values of skipped tokens are kept (``keys = "all"``): a token that
skips block i still shows its current state to the tokens that run it.

Per routed block, with x [B, L, D] the block input:

    g      = σ(w·x + b)                 the gate (b starts at ``bias``: tokens start running)
    enter  = g > threshold              among the candidates (the tokens still running)
    x'     = x + g·(block(x) − x)       entering tokens (the gate on the gradient path)

A compute cost ``cost · mean(g)`` over the candidates (``aux/skip_cost``) pushes gates down;
skipped tokens' gates learn from it only. Participation is not one-way: a token that skips
block i is still a candidate of block i+1 (and of the next step of a recurrent core).
Statistic: ``route/skip_entered``, the fraction of the candidates that ran the block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ponder.models.kinds import ROUTERS
from ponder.models.layers import AttnContext, Route, Router
from ponder.tasks.base import knob


@dataclass(frozen=True)
class SkipKnobs:
    threshold: float = knob(0.5, lo=0.0, hi=1.0, help="a token runs the block when its gate > threshold")
    cost: float = knob(0.01, lo=0.0, hi=100.0, help="weight of the mean gate (compute cost)")
    bias: float = knob(2.0, lo=-20.0, hi=20.0, help="initial gate bias (positive: tokens start running)")


@ROUTERS.register
class SkipRouter(Router):
    """Per-token skip/execute gate on a block; skipped tokens stay keys/values."""

    name = "skip"
    causal = True
    keys = "all"
    paper = "FlexiDepth (Luo et al. 2025); learning to skip layers per token"
    Knobs = SkipKnobs

    def __init__(self, *, d_model: int, knobs: Any = None) -> None:
        super().__init__()
        self.knobs: SkipKnobs = knobs or SkipKnobs()
        self.score = nn.Linear(d_model, 1)
        with torch.no_grad():
            self.score.bias.fill_(self.knobs.bias)
        self.d_model = d_model

    def forward(self, x: torch.Tensor, candidates: torch.Tensor, ctx: AttnContext) -> Route:
        """x [B, L, D], candidates [B, L] bool → Route(enter [B, L], weight = gate [B, L])."""
        g = torch.sigmoid(self.score(x).squeeze(-1))
        cand = candidates.to(g.dtype)
        n = cand.sum().clamp(min=1)
        enter = (g > self.knobs.threshold) & candidates
        ctx.add_aux("skip_cost", self.knobs.cost * (g * cand).sum() / n)
        ctx.add_stat("skip_entered", float((enter.to(g.dtype) * cand).sum() / n))
        return Route(enter=enter, weight=g)

    def flops_per_token(self) -> float:
        return 2.0 * self.d_model
