"""pondernet: conditional halting λ_n = σ(w·h^n + b), expected per-step loss + β·KL(p ‖ Geometric)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.policies.base import Decision, Halting, Policy, View, knob
from ponder.policies.halting import (PRIORS, THRESHOLD_TOL, compute_regulariser, conditional_log_step, halting_head,
                                     expected_steps, masked_mean, threshold_step)
from ponder.policies.registry import register


@dataclass(frozen=True)
class PonderNetKnobs:
    beta: float = knob(0.01, 0.0, 100.0, "weight of KL(p ‖ truncated Geometric(λ_p))")
    lambda_p: float = knob(0.2, 1e-4, 1.0, "halting probability of the geometric prior")
    prior: str = knob("geometric", choices=PRIORS, help="KL to: geometric(λ_p) | uniform (an entropy bonus, Ouro)")
    threshold: float = knob(0.5, 1e-3, 1.0, "inference: halt at the first n with Σ p ≥ threshold")
    halt_bias: float = knob(-3.0, -100.0, 100.0, "initial bias of the halting logit (negative = start deep)")


class ConditionalHalting(Policy):
    """Shared machinery of conditional (PonderNet-style) halting from the current state.

    Subclasses choose the knobs and defaults; the rule: after step n, λ_n = σ(head(h^n)),
    p(n) = λ_n ∏_{j<n}(1 − λ_j) with λ_N = 1 (log space). Training runs all N steps (the
    expected loss needs every step's readout); inference freezes a token at the first n
    whose cumulative p reaches ``threshold``.
    """

    online = True
    causal = True
    kinds = ("recurrent", "stacked")
    objective = "expected"

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.head = halting_head(d_model, self.knobs.halt_bias)

    def start(self, view: View) -> dict:
        zeros = torch.zeros_like(view.mask, dtype=view.h.dtype)
        return {"log_survive": zeros, "cum": zeros, "log_p": []}

    def halting_logit(self, view: View) -> torch.Tensor:
        """[B, L] halting logit after step ``view.n``."""
        return self.head(view.h).squeeze(-1)

    def step(self, memo: dict, view: View) -> Decision:
        z = self.halting_logit(view)
        log_p, memo["log_survive"] = conditional_log_step(z, memo["log_survive"],
                                                          view.n == view.max_steps)
        memo["log_p"].append(log_p)
        memo["cum"] = memo["cum"] + log_p.exp()
        if view.training:  # the expected loss needs every step
            return Decision(halt=torch.zeros_like(view.mask))
        return Decision(halt=memo["cum"] >= self.knobs.threshold - THRESHOLD_TOL)

    def finish(self, memo: dict, view: View) -> Halting:
        log_p = torch.stack(memo["log_p"], -1)
        dist = log_p.exp()
        aux = compute_regulariser(log_p, view.mask, beta=self.knobs.beta, lambda_p=self.knobs.lambda_p,
                                  prior=self.knobs.prior)
        return Halting(halt_dist=dist, aux_loss=aux, halt_step=threshold_step(dist, self.knobs.threshold),
                       stats={"expected_steps": masked_mean(expected_steps(dist), view.mask)})


@register
class PonderNet(ConditionalHalting):
    name = "pondernet"
    paper = "Banino, Balaguer, Blundell 2021, PonderNet: Learning to Ponder"
    Knobs = PonderNetKnobs
