"""fixed: every token runs the same number of steps (the baseline every result is compared with)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.errors import ConfigError
from ponder.policies.base import Decision, Halting, Policy, View, knob
from ponder.policies.registry import register


@dataclass(frozen=True)
class FixedKnobs:
    steps: int = knob(0, 0, 4096, "steps every token runs (0 = the model's max_steps)")


@register
class Fixed(Policy):
    name = "fixed"
    online = False          # the decision is made before any step
    causal = True
    kinds = ("recurrent", "stacked")
    objective = "final"
    paper = "Vaswani 2017 (fixed depth); Dehghani 2019 (weight-shared, fixed steps)"
    Knobs = FixedKnobs

    def check_knobs(self) -> None:
        if self.knobs.steps > self.max_steps:
            raise ConfigError(f"fixed: steps={self.knobs.steps} exceeds max_steps={self.max_steps}")

    def depth(self, view: View) -> int:
        """The steps of this forward: ``steps``, or the loop count (``view.max_steps``; the
        model's N unless a forward runs another depth), capped by the loop count."""
        return min(self.knobs.steps or view.max_steps, view.max_steps)

    def step(self, memo: dict, view: View) -> Decision:
        return Decision(halt=torch.full_like(view.mask, view.n == self.depth(view)))

    def finish(self, memo: dict, view: View) -> Halting:
        B, L = view.mask.shape
        depth = self.depth(view)
        dist = torch.zeros(B, L, view.max_steps, dtype=view.h.dtype, device=view.h.device)
        dist[..., depth - 1] = 1.0
        step = torch.full((B, L), depth, dtype=torch.long, device=view.h.device)
        return Halting(halt_dist=dist, halt_step=step)
