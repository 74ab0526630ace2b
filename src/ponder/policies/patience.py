"""patience: PaBEE — exit once the per-step prediction has stayed the same for ``patience`` steps.

After step n the token's prediction is ``ŷ^n = argmax`` of the per-step readout (shared coda
+ head). A counter c_n = c_{n−1} + 1 if ŷ^n = ŷ^{n−1} else 0 (c_1 = 0: nothing to compare
with); the token exits at the first n with c_n ≥ patience, so the earliest exit is
n = patience + 1 and patience ≥ N means full depth. Training: weighted per-exit losses
``Σ_n w_n·CE(y^n)``, w_n ∝ n, every token running N steps. Causal: the decision for token t
reads only token t's readouts (which in a causal model depend on positions ≤ t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.policies._per_exit import PerExitPolicy
from ponder.policies.base import View, knob
from ponder.policies.registry import register


@dataclass(frozen=True)
class PatienceKnobs:
    patience: int = knob(2, 1, 4096, "exit once the prediction stayed unchanged for this many steps")


@register
class Patience(PerExitPolicy):
    name = "patience"
    kinds = ("recurrent", "stacked")
    paper = "Zhou, Xu, Ge, McAuley, Xu, Wei 2020, BERT Loses Patience: Fast and Robust Inference with Early Exit (PaBEE)"
    Knobs = PatienceKnobs

    def start(self, view: View) -> dict:
        memo = super().start(view)
        memo["pred"] = None
        memo["count"] = torch.zeros_like(view.mask, dtype=torch.long)
        return memo

    def fires(self, memo: dict, view: View) -> torch.Tensor:
        pred = view.logits().detach().argmax(-1)
        if memo["pred"] is not None:
            memo["count"] = torch.where(pred == memo["pred"], memo["count"] + 1, 0)
        memo["pred"] = pred
        return memo["count"] >= self.knobs.patience
