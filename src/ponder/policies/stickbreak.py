"""stickbreak: stick-breaking halting with a soft-halted state (Sparse Universal Transformer)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ponder.policies.base import Decision, Halting, Policy, View, knob
from ponder.policies.halting import expected_steps, masked_mean, stickbreak_step
from ponder.policies.registry import register


@dataclass(frozen=True)
class StickBreakKnobs:
    tau: float = knob(0.01, 0.0, 100.0, "weight of the expected depth Σ_n n·p(n)")
    stop: float = knob(0.999, 0.5, 1.0, "a token stops updating once P(not halted) < 1 − stop")
    halt_bias: float = knob(-3.0, -100.0, 100.0, "initial bias of the halt logit (negative = start deep)")


@register
class StickBreak(Policy):
    """A 2-way softmax gate after step n gives α_n = P(halt at n | not before);
    p(n) = α_n ∏_{m<n}(1 − α_m). The state carried forward (and shown to attention) is the
    soft-halted mix Σ_{m≤n} p(m)·h^m + P(not halted)·h^n; a token stops once
    P(not halted) < 1 − stop (its remaining mass goes to that step). Loss: final loss +
    τ·mean Σ_n n·p(n). Gate weights zero-initialised (the bias sets the start depth)."""

    name = "stickbreak"
    online = True
    causal = True
    kinds = ("recurrent", "stacked")
    objective = "final"
    paper = "Tan, Shen, Chen, Courville, Gan 2023, Sparse Universal Transformer"
    Knobs = StickBreakKnobs

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.gate = nn.Linear(d_model, 2)  # [continue, halt]
        with torch.no_grad():
            self.gate.weight.zero_()
            self.gate.bias.copy_(torch.tensor([0.0, self.knobs.halt_bias]))

    def start(self, view: View) -> dict:
        return {"survive": torch.ones_like(view.mask, dtype=view.h.dtype), "done": torch.zeros_like(view.mask),
                "acc": torch.zeros_like(view.h), "p": [],
                "halt_step": torch.zeros_like(view.mask, dtype=torch.long)}

    def step(self, memo: dict, view: View) -> Decision:
        alpha = torch.softmax(self.gate(view.h), -1)[..., 1]
        survive_before = memo["survive"]
        p, memo["survive"], stop_now = stickbreak_step(alpha, survive_before, memo["done"],
                                                       view.n == view.max_steps, self.knobs.stop)
        memo["p"].append(p)
        memo["acc"] = memo["acc"] + p[..., None] * view.h
        # p already holds the remaining mass of a token stopping now, so acc is its exit state;
        # a running token shows acc + P(not halted)·h^n
        state = memo["acc"] + memo["survive"][..., None] * view.h
        memo["halt_step"] = torch.where(stop_now, view.n, memo["halt_step"])
        memo["done"] = memo["done"] | stop_now
        return Decision(halt=stop_now, state=state)

    def finish(self, memo: dict, view: View) -> Halting:
        dist = torch.stack(memo["p"], -1)
        depth = masked_mean(expected_steps(dist), view.mask)
        return Halting(halt_dist=dist, halt_step=memo["halt_step"], aux_loss=self.knobs.tau * depth,
                       stats={"expected_depth": depth})
