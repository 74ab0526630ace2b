"""Mixture-of-Depths (Raposo et al. 2024, arXiv:2404.02258): per block, the top-k tokens of
each sequence by a router score run the block; the others pass it unchanged.

Per routed block, with x [B, L, D] the block input:

    r      = w·x + b                          router logit per token
    enter  = top-k of the candidates by r,    k = ⌈capacity · n⌉ per sequence (n its
                                              candidates: the tokens still running)
    x'     = x + σ(r)·(block(x) − x)          entering tokens (the router on the gradient
                                              path; ``weight=raw``: r instead of σ(r))
    attention among the entering tokens only (``keys = "routed"``)

Top-k over the sequence is not causal: whether token t enters depends on the scores of the
tokens after it. The paper's two fixes, selectable with ``causal_rule``:

- ``predictor``: a small MLP on the *detached* block input predicts top-k membership,
  trained with BCE against it (``aux/mod_predictor_bce``); it does not touch the task
  gradient. A causal model at inference routes token t when the predictor's logit > 0.
- ``aux_loss``: BCE of the router logit itself against top-k membership
  (``aux/mod_router_bce``, "centres the sigmoid of the router's outputs around 0.5"); a
  causal model at inference routes token t when r > 0.

Training (and any non-causal model) always routes by top-k, as in the paper. At inference
in a causal model the decision for token t depends on its own state only, so decoding token
by token routes exactly as a full forward (tests/models/test_routers.py). Statistics:
``route/mod_entered`` (fraction of the candidates that entered) and, where the causal rule
decides, ``route/mod_agreement`` (its agreement with top-k on the same inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ponder.models.kinds import ROUTERS
from ponder.models.layers import AttnContext, Route, Router
from ponder.models.routers._select import capacity_k, top_k_mask
from ponder.tasks.base import knob


@dataclass(frozen=True)
class MoDKnobs:
    capacity: float = knob(0.125, lo=0.001, hi=1.0,
                           help="fraction of each sequence's running tokens that enter the block")
    causal_rule: str = knob("predictor", choices=("predictor", "aux_loss"),
                            help="inference rule of a causal model: an auxiliary predictor on "
                                 "detached inputs, or the router itself trained with BCE")
    aux_weight: float = knob(0.01, lo=0.0, hi=100.0,
                             help="weight of the BCE against top-k membership")
    predictor_hidden: int = knob(0, lo=0, hi=65536,
                                 help="hidden width of the predictor MLP (0: d_model // 8)")
    weight: str = knob("sigmoid", choices=("sigmoid", "raw"),
                       help="update scale: σ(r) or the raw router logit r (the paper's)")


@ROUTERS.register
class MixtureOfDepths(Router):
    """Top-k routing of tokens through a block by a linear router score (``keys = "routed"``)."""

    name = "mod"
    causal = True   # at inference in a causal model (training routes by top-k, as the paper)
    keys = "routed"
    paper = "Raposo et al. 2024, Mixture-of-Depths (arXiv:2404.02258)"
    Knobs = MoDKnobs

    def __init__(self, *, d_model: int, knobs: Any = None) -> None:
        super().__init__()
        self.knobs: MoDKnobs = knobs or MoDKnobs()
        self.score = nn.Linear(d_model, 1)
        self.predictor: Optional[nn.Sequential] = None
        self.hidden = self.knobs.predictor_hidden or max(1, d_model // 8)
        if self.knobs.causal_rule == "predictor":
            h = self.hidden
            self.predictor = nn.Sequential(nn.Linear(d_model, h), nn.GELU(), nn.Linear(h, 1))
        self.d_model = d_model

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x [B, L, D] → (router logit r [B, L], predictor logit [B, L] or None)."""
        r = self.score(x).squeeze(-1)
        p = None if self.predictor is None else self.predictor(x.detach()).squeeze(-1)
        return r, p

    def forward(self, x: torch.Tensor, candidates: torch.Tensor, ctx: AttnContext) -> Route:
        """x [B, L, D], candidates [B, L] bool → Route(enter [B, L], weight [B, L])."""
        r, p = self.logits(x)
        k = capacity_k(self.knobs.capacity, candidates.sum(1))
        top = top_k_mask(r, candidates, k)
        cand = candidates.to(r.dtype)
        n = cand.sum().clamp(min=1)
        target = top.to(r.dtype)
        # the causal rule's logit: what predicts top-k membership
        rule = p if p is not None else r
        bce = F.binary_cross_entropy_with_logits(rule, target, reduction="none")
        name = "mod_predictor_bce" if p is not None else "mod_router_bce"
        ctx.add_aux(name, self.knobs.aux_weight * (bce * cand).sum() / n)
        if ctx.causal and not self.training:
            enter = (rule > 0) & candidates
            ctx.add_stat("mod_agreement", float(((enter == top).to(r.dtype) * cand).sum() / n))
        else:
            enter = top
        ctx.add_stat("mod_entered", float((enter.to(r.dtype) * cand).sum() / n))
        weight = torch.sigmoid(r) if self.knobs.weight == "sigmoid" else r
        return Route(enter=enter, weight=weight)

    def flops_per_token(self) -> float:
        # the router's dot product and the predictor's MLP, on every candidate
        f = 2.0 * self.d_model
        if self.predictor is not None:
            f += 4.0 * self.d_model * self.hidden
        return f
