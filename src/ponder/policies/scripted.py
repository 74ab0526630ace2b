"""A scripted policy for tests and benchmarks: each token halts at a step given up front.

Not registered (it is not a mechanism): ``ScriptedPolicy(steps=tensor [B, L] long)`` or an
int for every token. Useful to test the engine (freezing, gradient isolation, equivalences)
and to time an execution mode at a chosen depth profile.
"""

from __future__ import annotations

from typing import Union

import torch

from ponder.policies.base import Decision, Halting, Policy, View


class ScriptedPolicy(Policy):
    name = "scripted"
    online = False
    causal = True
    kinds = ("recurrent", "stacked")
    objective = "final"
    paper = "-"

    def __init__(self, *, steps: Union[int, torch.Tensor]) -> None:
        super().__init__()
        self.steps = steps

    def plan(self, view: View) -> torch.Tensor:
        """[B, L] long halting step, clamped to 1..N."""
        s = torch.as_tensor(self.steps, device=view.mask.device)
        return s.expand(view.mask.shape).clamp(1, view.max_steps).long()

    def start(self, view: View) -> dict:
        return {"plan": self.plan(view)}

    def step(self, memo: dict, view: View) -> Decision:
        return Decision(halt=memo["plan"] == view.n)

    def finish(self, memo: dict, view: View) -> Halting:
        dist = torch.nn.functional.one_hot(memo["plan"] - 1, view.max_steps).to(view.h.dtype)
        return Halting(halt_dist=dist, halt_step=memo["plan"])
