"""Hybrid-LLM router: from the input alone, predict when a cheaper run is as good as the
largest (label: its answer is right or the largest one's is wrong, i.e. no quality gap).
The chosen run alone is paid for."""

from __future__ import annotations

import numpy as np

from ponder.cascade.outcomes import Outcomes
from ponder.cascade.rules import Rule, register
from ponder.cascade.rules._classifier import Scorer


@register
class Router(Rule):
    name = "router"
    sequential = False

    def __init__(self) -> None:
        self.scorers: list[Scorer] = []

    def fit(self, data: Outcomes, *, seed: int) -> None:
        no_gap = data.correct[:-1] | ~data.correct[-1]                  # [K-1, n]
        self.scorers = [Scorer(seed=seed).fit(data.features, no_gap[k]) for k in range(data.k - 1)]

    def scores(self, data: Outcomes) -> np.ndarray:
        return np.stack([s.predict(data.features) for s in self.scorers])
