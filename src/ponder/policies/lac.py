"""lac: L2-norm guided adaptive computation — stop when the state's norm stops changing much.

No parameters. The rule of the public code (Shemiranifar & Dehghani, ICLR 2023 Tiny Papers;
manishemirani/L2-Norm-Guided-Adaptive-Computation, ``scenic/projects/lac/lac_uvit.py``:
``LacStep`` and ``UTEncoder.stop_fn``), per token. With ``Δ_n = ‖h^n‖ − ‖h^{n−1}‖`` (h^0 the
prelude output) and ``Δ_0 = 0``, after step n the token stops (keeps h^n) when

    |Δ_{n−1}| < α · (max S − min S),   S = {0} ∪ {Δ_1, …, Δ_{n−2}}

Three details of that code this follows, each of which changes decisions:

- **one-step lag**: the test before running step n+1 reads the delta of the step *before*
  (the code computes the delta of the current state only when it runs the next layer);
- **the history excludes the delta being tested** (the threshold is the one carried from the
  previous step);
- **zero-initialised history slots count**: the code keeps the deltas in a zero-filled array
  of N slots (slots 0 and 1 always hold 0), so 0 is always in S.

So the earliest stop is after step 3. A range below 1e-6·‖h^n‖ counts as 0 (our guard, not in
the public code: deltas that differ only by float rounding, e.g. a constant norm, are no
history), so a constant norm never stops. A token the rule never stops runs N steps. The
public code stops the whole batch when every token's test holds (``jnp.all``) and, in its
per-token mode, takes max/min over every token's history at once; we decide per token with
each token's own history.

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
                        "stop when |Δ_{n−1}| < alpha · range({0, Δ_1 … Δ_{n−2}}) (0 = never stop early)")


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
        zeros = torch.zeros_like(view.mask, dtype=wide(view.h).dtype)
        # extremes of S = {0} ∪ {Δ_1 … Δ_{n−2}} (the zero slots of the public code), and Δ_{n−1}
        memo["dmax"], memo["dmin"], memo["last"] = zeros, zeros, zeros
        return memo

    def fires(self, memo: dict, view: View) -> torch.Tensor:
        tested = memo["last"]  # Δ_{n−1} (Δ_0 = 0)
        spread = memo["dmax"] - memo["dmin"]
        # a history whose deltas differ only by rounding has no range (constant norm: never stop)
        has_range = spread > RANGE_TOL * state_norm(view.h)
        fire = has_range & (tested.abs() < self.knobs.alpha * spread)
        # the tested delta joins the history of the next test; this step's delta is tested next
        memo["dmax"] = torch.maximum(memo["dmax"], tested)
        memo["dmin"] = torch.minimum(memo["dmin"], tested)
        memo["last"] = state_norm(view.h) - state_norm(view.prev)
        return fire
