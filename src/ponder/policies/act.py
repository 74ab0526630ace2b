"""act: Adaptive Computation Time (Graves 2016), per token, mean-field output."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.policies.base import Decision, Halting, Policy, View, knob
from ponder.policies.halting import act_step, halting_head, masked_mean
from ponder.policies.registry import register


@dataclass(frozen=True)
class ActKnobs:
    tau: float = knob(0.01, 0.0, 100.0, "weight of the ponder cost N(t) + R(t)")
    eps: float = knob(0.01, 1e-6, 0.5, "halt when the cumulative halting unit reaches 1 − eps")
    halt_bias: float = knob(-3.0, -100.0, 100.0, "initial bias of the halting unit (negative = start deep)")


@register
class Act(Policy):
    """After step n, h^n = σ(w·s^n + b); halt at the first n with Σ_{m≤n} h^m ≥ 1 − ε (forced
    at N); p(n) = h^n before, remainder R = 1 − Σ_{m<N(t)} h^m on the halting step. The exit
    state is the mean-field Σ_n p(n)·s^n; loss L + τ·mean(N(t) + R(t)) (gradient via R only)."""

    name = "act"
    online = True
    causal = True
    kinds = ("recurrent", "stacked")
    objective = "final"
    paper = "Graves 2016, Adaptive Computation Time for Recurrent Neural Networks"
    Knobs = ActKnobs
    strict = False  # UT's variant tests cum > 1 − ε

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.head = halting_head(d_model, self.knobs.halt_bias)

    def start(self, view: View) -> dict:
        zeros = torch.zeros_like(view.mask, dtype=view.h.dtype)
        return {"cum": zeros, "done": torch.zeros_like(view.mask), "mix": torch.zeros_like(view.h),
                "p": [], "remainder": zeros, "halt_step": torch.zeros_like(view.mask, dtype=torch.long)}

    def unit(self, view: View) -> torch.Tensor:
        """[B, L] halting unit of step ``view.n`` (from the state after the step)."""
        return torch.sigmoid(self.head(view.h).squeeze(-1))

    def mix(self, memo: dict, p: torch.Tensor, view: View) -> torch.Tensor:
        """Mean-field state Σ_{m≤n} p(m)·s^m, [B, L, D]."""
        return memo["mix"] + p[..., None] * view.h

    def step(self, memo: dict, view: View) -> Decision:
        p, memo["cum"], halt_now, r = act_step(self.unit(view), memo["cum"], memo["done"],
                                              view.n == view.max_steps, self.knobs.eps, self.strict)
        memo["p"].append(p)
        memo["mix"] = self.mix(memo, p, view)
        memo["remainder"] = memo["remainder"] + r
        memo["halt_step"] = torch.where(halt_now, view.n, memo["halt_step"])
        memo["done"] = memo["done"] | halt_now
        return Decision(halt=halt_now, exit_state=memo["mix"])

    def finish(self, memo: dict, view: View) -> Halting:
        cost = memo["halt_step"].to(memo["remainder"].dtype) + memo["remainder"]
        return Halting(halt_dist=torch.stack(memo["p"], -1), halt_step=memo["halt_step"],
                       aux_loss=self.knobs.tau * masked_mean(cost, view.mask),
                       stats={"ponder_cost": masked_mean(cost, view.mask)})
