"""ut_act: the Universal Transformer's per-position ACT (Dehghani 2019, tensor2tensor)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ponder.policies.act import Act
from ponder.policies.base import View, knob
from ponder.policies.registry import register


@dataclass(frozen=True)
class UtActKnobs:
    tau: float = knob(0.01, 0.0, 100.0, "weight of mean(steps + remainder)")
    eps: float = knob(0.01, 1e-6, 0.5, "halt when the cumulative halting probability exceeds 1 − eps")
    halt_bias: float = knob(-3.0, -100.0, 100.0,
                            "initial bias of the halting unit (t2t uses +1, which halts after ~2 steps)")


@register
class UtAct(Act):
    """As ACT, with tensor2tensor's details: the halting probability of step n is computed
    from the state *entering* step n; the test is cum > 1 − ε; the output is the running
    update ``new = f(state)·w + previous·(1 − w)`` (``previous`` starts at 0, w the step's
    halting weight, 0 once halted); loss weight τ·mean(steps + remainder)."""

    name = "ut_act"
    paper = "Dehghani, Gouws, Vinyals, Uszkoreit, Kaiser 2019, Universal Transformers"
    Knobs = UtActKnobs
    strict = True

    def unit(self, view: View) -> torch.Tensor:
        return torch.sigmoid(self.head(view.prev).squeeze(-1))

    def mix(self, memo: dict, p: torch.Tensor, view: View) -> torch.Tensor:
        w = p[..., None]
        return view.h * w + memo["mix"] * (1 - w)
