"""What ANIRA-E and ANIRA-O share: the knobs, the objective and the compute regulariser.

Both use the expected per-step loss Σ_n p(n)·L_n (``Policy.loss`` with objective
"expected") and β·KL(p ‖ truncated Geometric(λ_p)) (``halting.compute_regulariser``); only
the timing of the decision differs (early: from the prelude output; online: at each step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.policies.base import knob
from ponder.policies.halting import PRIORS, compute_regulariser, expected_steps, masked_mean


@dataclass(frozen=True)
class AniraKnobs:
    beta: float = knob(0.05, 0.0, 100.0, "weight of KL(p ‖ truncated Geometric(λ_p))")
    lambda_p: float = knob(0.3, 1e-4, 1.0, "halting probability of the geometric prior")
    prior: str = knob("geometric", choices=PRIORS, help="KL to: geometric(λ_p) | uniform (an entropy bonus, Ouro)")
    threshold: float = knob(0.5, 1e-3, 1.0, "inference: halt at the first n with Σ p ≥ threshold")
    halt_bias: float = knob(-3.0, -100.0, 100.0, "initial halting logit (negative = start deep)")


ANIRA_PAPER = ("Moosa, Lohit, Wang, Chatterjee, Yin 2026, Understanding Dynamic Compute Allocation "
               "in Recurrent Transformers (ANIRA), arXiv:2602.08864")


def anira_aux(log_p: torch.Tensor, mask: torch.Tensor, knobs: AniraKnobs) -> tuple[torch.Tensor, dict]:
    """The shared regulariser and its stats: log_p [B, L, N], mask [B, L]."""
    aux = compute_regulariser(log_p, mask, beta=knobs.beta, lambda_p=knobs.lambda_p, prior=knobs.prior)
    return aux, {"expected_steps": masked_mean(expected_steps(log_p.exp()), mask)}
