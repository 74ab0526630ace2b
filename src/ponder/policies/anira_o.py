"""anira_o: ANIRA's online policy — decide at each step, from the current state, whether to stop."""

from __future__ import annotations

import torch

from ponder.policies._anira import ANIRA_PAPER, AniraKnobs, anira_aux
from ponder.policies.base import Halting, View
from ponder.policies.halting import threshold_step
from ponder.policies.pondernet import ConditionalHalting
from ponder.policies.registry import register


@register
class AniraO(ConditionalHalting):
    """λ_n = σ(w·h^n + b) after each step, p(n) = λ_n ∏_{j<n}(1 − λ_j), λ_N = 1; exited tokens
    are frozen at their exit state and stay visible to attention. Objective and regulariser
    are ANIRA-E's exactly (``_anira``)."""

    name = "anira_o"
    paper = ANIRA_PAPER + " — online"
    Knobs = AniraKnobs

    def finish(self, memo: dict, view: View) -> Halting:
        log_p = torch.stack(memo["log_p"], -1)
        aux, stats = anira_aux(log_p, view.mask, self.knobs)
        dist = log_p.exp()
        return Halting(halt_dist=dist, aux_loss=aux, halt_step=threshold_step(dist, self.knobs.threshold),
                       stats=stats)
