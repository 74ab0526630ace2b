"""lac: L2-norm guided adaptive computation — stop when the state's norm stops changing much.

No parameters. Per token, after step n: ``Δ_n = ‖h^n‖ − ‖h^{n−1}‖`` (h^0 the prelude
output), and the token stops at the first n ≥ 2 with

    |Δ_n| < α · (max_{m≤n} Δ_m − min_{m≤n} Δ_m)

The history includes Δ_n itself and holds signed deltas. First steps: at n = 1 the history
is one delta, its range is 0 and the rule cannot fire; so the earliest exit is n = 2 (the
rule needs ≥ 2 deltas, which this makes explicit). A range below 1e-6·‖h^n‖ counts as 0
(deltas that differ only by float rounding, e.g. a constant norm, are no history), so a
constant norm never stops. A token the rule never stops runs N steps.

Objective: since the rule has no parameters there is nothing to train for it, but an exit
before N reads out an intermediate state, which a fixed-depth model never learned to read.
So LAC trains with the weighted per-exit losses ``Σ_n w_n·CE(y^n)``, w_n ∝ n (the same
objective as CALM / PaBEE): every exit is usable and the deepest counts most. In training all
tokens run N steps and ``halt_step`` is where the rule would have stopped them.
Causal: the decision for token t uses only token t's own states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.policies._per_exit import PerExitPolicy, wide
from ponder.policies.base import View, knob
from ponder.policies.registry import register

RANGE_TOL = 1e-6  # relative to ‖h^n‖: a smaller spread of the deltas is float rounding, not history


@dataclass(frozen=True)
class LacKnobs:
    alpha: float = knob(0.8, 0.0, 100.0,
                        "stop when |Δ_n| < alpha · (max Δ − min Δ) over the history (0 = never stop early)")


def state_norm(h: torch.Tensor) -> torch.Tensor:
    """[B, L, D] → ‖h‖₂ per token [B, L] (≥ float32, no gradient: it only drives a decision)."""
    return wide(h).norm(dim=-1)


@register
class Lac(PerExitPolicy):
    name = "lac"
    kinds = ("recurrent", "stacked")
    paper = "L2 Norm Guided Adaptive Computation (LAC), ICLR 2023 Tiny Papers (openreview qW_GZYyn7C)"
    Knobs = LacKnobs

    def start(self, view: View) -> dict:
        memo = super().start(view)
        # running extremes of the signed deltas; ±inf until the first delta arrives
        dtype = wide(view.h).dtype
        memo["dmax"] = torch.full_like(view.mask, -torch.inf, dtype=dtype)
        memo["dmin"] = torch.full_like(view.mask, torch.inf, dtype=dtype)
        return memo

    def fires(self, memo: dict, view: View) -> torch.Tensor:
        delta = state_norm(view.h) - state_norm(view.prev)
        memo["dmax"] = torch.maximum(memo["dmax"], delta)
        memo["dmin"] = torch.minimum(memo["dmin"], delta)
        if view.n < 2:  # one delta: no range to compare with
            return torch.zeros_like(view.mask)
        spread = memo["dmax"] - memo["dmin"]
        # a history whose deltas differ only by rounding has no range (constant norm: never stop)
        has_range = spread > RANGE_TOL * state_norm(view.h)
        return has_range & (delta.abs() < self.knobs.alpha * spread)
