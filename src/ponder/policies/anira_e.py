"""anira_e: ANIRA's early policy — one decision per token from the prelude output, before step 1."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ponder.policies._anira import ANIRA_PAPER, AniraKnobs, anira_aux
from ponder.policies.base import Decision, Halting, Policy, View, knob
from ponder.policies.halting import conditional_log_dist, threshold_step
from ponder.policies.registry import register


@dataclass(frozen=True)
class AniraEKnobs(AniraKnobs):
    inference: str = knob("threshold", choices=("threshold", "argmax"),
                          help="inference depth: first n with Σ p ≥ threshold, or the argmax")


@register
class AniraE(Policy):
    """p = softmax(W·h^0 + b) over depths 1..N from the prelude output h^0, decided before any
    step. The bias starts at the distribution conditional halting with logit ``halt_bias``
    would give, so E and O start from the same (deep) distribution."""

    name = "anira_e"
    online = False
    causal = True
    kinds = ("recurrent", "stacked")
    objective = "expected"
    paper = ANIRA_PAPER + " — early"
    Knobs = AniraEKnobs

    any_depth = False  # a softmax head over exactly 1..N

    def bind(self, *, d_model: int, max_steps: int) -> None:
        super().bind(d_model=d_model, max_steps=max_steps)
        self.head = nn.Linear(d_model, max_steps)
        with torch.no_grad():
            start = conditional_log_dist(torch.full((max_steps,), self.knobs.halt_bias, dtype=torch.float64))
            self.head.bias.copy_(start.float())

    def start(self, view: View) -> dict:
        log_p = torch.log_softmax(self.head(view.h), -1)
        dist = log_p.exp()
        if self.knobs.inference == "argmax":
            step = dist.argmax(-1) + 1
        else:
            step = threshold_step(dist, self.knobs.threshold)
        return {"log_p": log_p, "halt_step": step}

    def step(self, memo: dict, view: View) -> Decision:
        if view.training:  # the expected loss needs every step
            return Decision(halt=torch.zeros_like(view.mask))
        return Decision(halt=memo["halt_step"] == view.n)

    def finish(self, memo: dict, view: View) -> Halting:
        aux, stats = anira_aux(memo["log_p"], view.mask, self.knobs)
        return Halting(halt_dist=memo["log_p"].exp(), aux_loss=aux, halt_step=memo["halt_step"],
                       stats=stats)
