"""``switch``: Switch Transformer top-1 routing (Fedus et al. 2021).

    p = softmax(x W_r)      e = argmax p      y = p_e · expert_e(x)

Capacity ``ceil(capacity_factor · n / E)`` tokens per expert (n: the rows entering the
block); a token over its expert's capacity is dropped: the routed experts add nothing, so it
passes the FFN sub-layer through the residual unchanged (shared experts, if any, still run).
Aux losses: load balance ``α · E · Σ_i f_i P_i`` (f_i: share of the entering tokens whose
argmax is i, before drops; P_i: their mean probability of i) and the router z-loss
``β · mean(logsumexp(logits)²)``.

Causality: a token is dropped only in favour of earlier positions (see ``routing``), but the
capacity itself counts the batch's entering tokens; ``capacity_factor=0`` (no capacity) makes
a token's output depend on itself only.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ponder.models.experts.routing import RoutedFFN, choice_major, load_balance, softmax_router, z_loss
from ponder.models.kinds import FFNS
from ponder.models.layers import AttnContext
from ponder.tasks.base import knob


@dataclasses.dataclass(frozen=True)
class SwitchKnobs:
    n_experts: int = knob(8, lo=1, hi=256, help="routed experts")
    d_expert: int = knob(0, lo=0, hi=65536, help="hidden width of an expert (0: d_ff)")
    capacity_factor: float = knob(1.25, lo=0.0, hi=64.0, help="expert capacity × n/E (0: no capacity, nothing dropped)")
    balance: float = knob(0.01, lo=0.0, hi=10.0, help="α of the load-balance loss")
    z_loss: float = knob(0.001, lo=0.0, hi=10.0, help="weight of the router z-loss")
    shared: int = knob(0, lo=0, hi=16, help="shared experts run on every token")


def aux_losses(ffn: RoutedFFN, ctx: Optional[AttnContext], logits: torch.Tensor,
               probs: torch.Tensor, expert: torch.Tensor) -> None:
    """Add the load-balance and z-loss terms (``<kind>_balance``, ``<kind>_z``)."""
    if ctx is None or probs.shape[1] == 0:
        return
    if ffn.knobs.balance > 0:
        ctx.add_aux(f"{ffn.name}_balance", ffn.knobs.balance * load_balance(probs, expert, ffn.n_experts))
    if ffn.knobs.z_loss > 0:
        ctx.add_aux(f"{ffn.name}_z", ffn.knobs.z_loss * z_loss(logits))


@FFNS.register
class Switch(RoutedFFN):
    """Top-1 routed experts with capacity, load-balance loss and z-loss."""

    name = "switch"
    paper = "Fedus et al. 2021, Switch Transformers"
    Knobs = SwitchKnobs

    def route(self, x, idx, ctx, rows):
        logits, probs = softmax_router(self.router, x, idx)
        gate, expert = probs.max(0)
        aux_losses(self, ctx, logits, probs, expert)
        return choice_major(idx, expert[None], gate[None]), probs
