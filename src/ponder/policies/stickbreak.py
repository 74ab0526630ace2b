"""stickbreak: stick-breaking halting with a soft-halted state (Sparse Universal Transformer).

The recurrence of the public code (shawntan/SUT, ``halting.py``: ``ACTWrapper.forward``, as
``transformer_encoder.py`` calls it). Each token carries two tensors: its **stream** x^n (the
plain output of step n) and the **soft-halted mix** m^n. After step n:

    α_n = softmax(gate(x^n))[halt]               gate: Linear → GELU → Linear(2, no bias), the
                                                 last layer zero-initialised
    p(n) = α_n ∏_{m<n}(1 − α_m)                  stick-breaking; S_n = P(not halted after n)
    m^n  = Σ_{m≤n} p(m)·x^m + S_n·x^n

Step n+1 then takes its **queries, residual and MLP from the stream x^n** and its **keys and
values from the mixes** m^n of every token (``Decision.memory``); the gate reads the stream.
A token stops once S_n < 1 − stop (its remaining mass goes to that step, so it freezes at
m^n, which others keep attending to). The output read out is the mix. Loss: final loss +
τ·mean Σ_n n·p(n) (SUT's ``act_loss`` counts from 0: the same up to the constant 1).

``halt_bias`` is a constant added to the halt logit (not a parameter): 0 is SUT's gate exactly
(α = ½ at initialisation); the default −3 starts deep (the halting-bias trap of
reference/mechanisms.md). With a core of several blocks per step, the mixes are the keys and
values of the step's first block; later blocks attend within the step as usual.
"""

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
    halt_bias: float = knob(-3.0, -100.0, 100.0,
                            "constant added to the halt logit (0 = SUT's gate; negative = start deep)")


@register
class StickBreak(Policy):
    """SUT's stick-breaking halting (see the module docstring): a 2-way softmax gate on the
    token's stream; keys/values from the soft-halted mix; frozen at the mix."""

    name = "stickbreak"
    online = True
    causal = True
    kinds = ("recurrent", "stacked")
    objective = "final"
    paper = "Tan, Shen, Chen, Courville, Gan 2023, Sparse Universal Transformer"
    Knobs = StickBreakKnobs
    zero_grad_at_init = ("gate.0.weight", "gate.0.bias")  # behind the zero-initialised layer

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.gate = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(),
                                  nn.Linear(d_model, 2, bias=False))  # [continue, halt]
        with torch.no_grad():
            self.gate[-1].weight.zero_()
        self.register_buffer("offset", torch.tensor([0.0, self.knobs.halt_bias]), persistent=False)

    def alpha(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, L, D] → α = P(halt now | not before) [B, L]."""
        return torch.softmax(self.gate(h) + self.offset.to(h.dtype), -1)[..., 1]

    def start(self, view: View) -> dict:
        return {"survive": torch.ones_like(view.mask, dtype=view.h.dtype), "done": torch.zeros_like(view.mask),
                "acc": torch.zeros_like(view.h), "p": [],
                "halt_step": torch.zeros_like(view.mask, dtype=torch.long)}

    def step(self, memo: dict, view: View) -> Decision:
        alpha = self.alpha(view.h)
        p, memo["survive"], stop_now = stickbreak_step(alpha, memo["survive"], memo["done"],
                                                       view.n == view.max_steps, self.knobs.stop)
        memo["p"].append(p)
        memo["acc"] = memo["acc"] + p[..., None] * view.h
        # p already holds the remaining mass of a token stopping now, so acc is its mix
        mix = memo["acc"] + memo["survive"][..., None] * view.h
        memo["halt_step"] = torch.where(stop_now, view.n, memo["halt_step"])
        memo["done"] = memo["done"] | stop_now
        # running tokens carry their stream (state None: view.h); attention reads the mixes
        return Decision(halt=stop_now, exit_state=mix, memory=mix)

    def finish(self, memo: dict, view: View) -> Halting:
        dist = torch.stack(memo["p"], -1)
        depth = masked_mean(expected_steps(dist), view.mask)
        return Halting(halt_dist=dist, halt_step=memo["halt_step"], aux_loss=self.knobs.tau * depth,
                       stats={"expected_depth": depth})
