"""``topk``: GShard / Mixtral top-k routing with renormalised gates.

    p = softmax(x W_r)      (e_1..e_k) = top-k of p      y = Σ_j (p_{e_j} / Σ_j' p_{e_j'}) · expert_{e_j}(x)

Capacity ``ceil(capacity_factor · n · k / E)`` pairs per expert; every token's first choice
has priority over any second choice (then position, then sequence). A dropped pair adds
nothing (the other choices keep their renormalised gates). Aux losses as ``switch``, with
f_i the share of all n·k choices that picked i; optionally SUT's mutual-information loss
(Tan et al. 2023, ``moe.py::MoE``; knob ``mi``): ``−mi · MI(expert; token)`` with
``MI = H(p̄) − mean_x H(p(·|x))``, p(·|x) the softmax router probabilities of an entering
row and p̄ their mean, pooled over every call of the module in a forward (the rows of all
core steps together, as SUT's ``acc_aux_loss``: one term per module, not one per call;
:func:`routing.add_pooled_mi`). SUT's code returns
``H(e|x) + H(e)`` (our reading of its signs, ``mechanisms_next.md`` §4), which would not
maximise MI; this is the loss its paper describes (maximise MI).
"""

from __future__ import annotations

import dataclasses

from ponder.models.experts.routing import (RoutedFFN, add_pooled_mi, choice_major, small_topk,
                                           softmax_router)
from ponder.models.experts.switch import aux_losses
from ponder.models.kinds import FFNS
from ponder.tasks.base import knob


@dataclasses.dataclass(frozen=True)
class TopKKnobs:
    n_experts: int = knob(8, lo=1, hi=256, help="routed experts")
    k: int = knob(2, lo=1, hi=64, help="experts per token")
    d_expert: int = knob(0, lo=0, hi=65536, help="hidden width of an expert (0: d_ff // k)")
    capacity_factor: float = knob(1.25, lo=0.0, hi=64.0, help="expert capacity × n·k/E (0: no capacity)")
    balance: float = knob(0.01, lo=0.0, hi=10.0, help="α of the load-balance loss")
    z_loss: float = knob(0.001, lo=0.0, hi=10.0, help="weight of the router z-loss")
    shared: int = knob(0, lo=0, hi=16, help="shared experts run on every token")
    mi: float = knob(0.0, lo=0.0, hi=10.0, help="weight of SUT's mutual-information loss −MI(expert; token)")


@FFNS.register
class TopK(RoutedFFN):
    """Top-k routed experts, gates renormalised over the k chosen."""

    name = "topk"
    paper = "Lepikhin et al. 2020, GShard; Jiang et al. 2024, Mixtral of Experts"
    Knobs = TopKKnobs

    def route(self, x, idx, ctx, rows):
        logits, probs = softmax_router(self.router, x, idx)
        top, expert = small_topk(probs, self.k)
        gate = top / top.sum(0, keepdim=True)
        aux_losses(self, ctx, logits, probs, expert.reshape(-1))
        if ctx is not None and self.knobs.mi > 0:
            add_pooled_mi(ctx, f"{self.name}_mi", self, self.knobs.mi, probs)
        return choice_major(idx, expert, gate), probs
