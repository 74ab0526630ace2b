"""ouro: LoopLM's two gates (Ouro, arXiv:2510.25741) — the stage-I exit distribution and the
stage-II gate trained on "the loss still improves by more than γ".

Stage I is pondernet's machinery with the uniform (entropy) prior by default: after step t,
λ_t = σ(w·h_t + b), p_t = λ_t ∏_{j<t}(1 − λ_j) (λ_N = 1), loss Σ_t p_t·L^(t) + β·KL(p ‖ U).

Stage II: a second gate μ_t = σ(w'·sg(h_t) + b') reads the *detached* state and is trained by

    BCE(1 − μ_t, w_t),   w_t = σ(k·(max(0, L^(t−1) − L^(t)) − γ)),   t = 2..N,

with L^(t) the token's step-t cross-entropy, detached: "continue" (1 − μ_t) is the label "step t
still lowered the loss by more than γ". Neither the gate's input nor its labels carry
gradient, so this loss trains μ only; the LM is frozen with respect to it, as Ouro's stage II
freezes the LM. Difference from the published recipe: the two stages run concurrently in one
run (the labels come from the LM as it is at that optimiser step) rather than stage II after
stage I on a frozen checkpoint. ``k`` and ``γ`` defaults are ours (the paper's are not in the
reference). Scored tokens only.

Inference (``exit``): ``stage2`` (default) halts a token at the first t where the CDF of μ's
stick-breaking distribution p'_t = μ_t ∏_{j<t}(1 − μ_j) reaches ``threshold``; ``stage1`` uses
λ's (pondernet with the uniform prior). Training runs all N steps either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ponder.policies.base import Decision, Halting, View, knob
from ponder.policies.halting import (PRIORS, THRESHOLD_TOL, conditional_log_step, halting_head,
                                     scored_mask, step_ce, threshold_step)
from ponder.policies.pondernet import ConditionalHalting
from ponder.policies.registry import register

EXITS = ("stage2", "stage1")


@dataclass(frozen=True)
class OuroKnobs:
    beta: float = knob(0.01, 0.0, 100.0, "weight of KL(p ‖ prior) of the stage-I distribution")
    prior: str = knob("uniform", choices=PRIORS, help="stage-I prior: uniform (Ouro's entropy term) | geometric")
    lambda_p: float = knob(0.2, 1e-4, 1.0, "halting probability of the geometric prior (prior=geometric)")
    gamma: float = knob(0.01, 0.0, 100.0, "γ: the loss improvement below which a step counts as useless")
    k: float = knob(100.0, 1e-3, 1e6, "slope of the soft label w_t = σ(k·(max(0, ΔL) − γ))")
    gate_weight: float = knob(1.0, 0.0, 100.0, "weight of the stage-II BCE")
    exit: str = knob("stage2", choices=EXITS, help="inference: the stage-II gate | the stage-I distribution")
    threshold: float = knob(0.5, 1e-3, 1.0, "inference: halt at the first t whose CDF ≥ threshold")
    halt_bias: float = knob(-3.0, -100.0, 100.0, "initial bias of both gates (negative = start deep)")


def improvement_labels(ce: torch.Tensor, *, k: float, gamma: float) -> torch.Tensor:
    """Per-step losses [B, L, N] → the stage-II labels w_t [B, L, N−1] for t = 2..N."""
    gain = (ce[..., :-1] - ce[..., 1:]).clamp_min(0.0)
    return torch.sigmoid(k * (gain - gamma))


@register
class Ouro(ConditionalHalting):
    name = "ouro"
    paper = "Zhu et al. 2025, Scaling Latent Reasoning via Looped Language Models (Ouro, arXiv:2510.25741)"
    Knobs = OuroKnobs

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.gate2 = halting_head(d_model, self.knobs.halt_bias)

    def start(self, view: View) -> dict:
        memo = super().start(view)
        memo["z2"] = []
        memo["log_survive2"] = torch.zeros_like(view.mask, dtype=view.h.dtype)
        memo["cum2"] = torch.zeros_like(view.mask, dtype=view.h.dtype)
        return memo

    def step(self, memo: dict, view: View) -> Decision:
        decision = super().step(memo, view)
        z2 = self.gate2(view.h.detach()).squeeze(-1)                 # [B, L]
        memo["z2"].append(z2)
        log_p2, memo["log_survive2"] = conditional_log_step(z2.detach(), memo["log_survive2"],
                                                            view.n == view.max_steps)
        memo["cum2"] = memo["cum2"] + log_p2.exp()
        if view.training or self.knobs.exit == "stage1":
            return decision
        return Decision(halt=memo["cum2"] >= self.knobs.threshold - THRESHOLD_TOL)

    def finish(self, memo: dict, view: View) -> Halting:
        halting = super().finish(memo, view)
        z2 = torch.stack(memo["z2"], -1)                              # [B, L, N]
        halting.carry["gate2"] = z2
        if self.knobs.exit == "stage2":
            N = z2.shape[-1]
            log_p2 = []
            survive = torch.zeros_like(z2[..., 0])
            for t in range(N):
                lp, survive = conditional_log_step(z2[..., t].detach(), survive, t == N - 1)
                log_p2.append(lp)
            halting.halt_step = threshold_step(torch.stack(log_p2, -1).exp(), self.knobs.threshold)
        return halting

    def loss(self, out, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        task, stats = super().loss(out, targets)
        carry = out.extras.get("policy_carry", {})
        # eval, nothing to compare, or an output this policy did not make: the stage-I loss
        if out.step_logits is None or out.step_logits.shape[2] < 2 or "gate2" not in carry:
            return task, stats
        ce = step_ce(out.step_logits.detach(), targets)               # [B, L, N]
        w = improvement_labels(ce, k=self.knobs.k, gamma=self.knobs.gamma)
        z2 = carry["gate2"][..., 1:]                                  # [B, L, N−1]
        z2 = z2.to(torch.promote_types(z2.dtype, torch.float32))
        # 1 − μ_t = σ(−z_t): the BCE of "continue" against w_t
        bce = F.binary_cross_entropy_with_logits(-z2, w.to(z2.dtype), reduction="none")
        scored = scored_mask(targets)[..., None].expand_as(bce).to(bce.dtype)
        gate = (bce * scored).sum() / scored.sum().clamp_min(1)
        stats = {**stats, "gate2_loss": float(gate.detach()), "prediction_loss": float(task.detach()),
                 "continue_label": float((w * scored).sum() / scored.sum().clamp_min(1))}
        return task + self.knobs.gate_weight * gate, stats
