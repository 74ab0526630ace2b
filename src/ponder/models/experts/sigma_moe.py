"""``sigma_moe``: MoEUT's σ-MoE (Csordás et al. 2024).

    s = σ(x W_sel)      (e_1..e_k) = top-k of s      y = Σ_j s_{e_j} · expert_{e_j}(x)

Sigmoid gates (not renormalised; each expert's gate is independent), no capacity, no
load-balance loss. The regulariser is the negative entropy of the *mean* selection
distribution, ``γ · Σ_i p̄_i log p̄_i`` with p̄ = the entering rows' mean of softmax(x W_sel):
minimising it spreads the average expert usage. (MoEUT's experts read the un-normalised
residual and only the selection a LayerNorm of it; a ponder FFN sees the normed input only,
so both read it; the experts are the bank's GELU MLPs.)
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ponder.models.experts.routing import RoutedFFN, choice_major, router_logits, small_topk
from ponder.models.kinds import FFNS
from ponder.tasks.base import knob


@dataclasses.dataclass(frozen=True)
class SigmaMoEKnobs:
    n_experts: int = knob(8, lo=1, hi=256, help="routed experts")
    k: int = knob(2, lo=1, hi=64, help="experts per token")
    d_expert: int = knob(0, lo=0, hi=65536, help="hidden width of an expert (0: d_ff // k)")
    entropy: float = knob(0.01, lo=0.0, hi=10.0, help="weight γ of the mean-selection entropy regulariser")
    shared: int = knob(0, lo=0, hi=16, help="shared experts run on every token")


@FFNS.register
class SigmaMoE(RoutedFFN):
    """Sigmoid-gated top-k experts with MoEUT's entropy regulariser."""

    name = "sigma_moe"
    paper = "Csordás et al. 2024, MoEUT: Mixture-of-Experts Universal Transformers"
    Knobs = SigmaMoEKnobs

    def route(self, x, idx, ctx, rows):
        logits = router_logits(self.router, x, idx)                 # [E, n]
        gate, expert = small_topk(torch.sigmoid(logits), self.k)
        n = idx.numel()
        probs = torch.softmax(logits, 0)
        if ctx is not None and n and self.knobs.entropy > 0:
            # log of the mean selection distribution, in log space as MoEUT does
            log_mean = torch.logsumexp(torch.log_softmax(logits, 0), 1) - math.log(n)
            ctx.add_aux(f"{self.name}_entropy", self.knobs.entropy * (log_mean.exp() * log_mean).sum())
        return choice_major(idx, expert, gate), probs
