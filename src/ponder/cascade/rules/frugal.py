"""FrugalGPT-style cascade: a learned scorer per stage predicts, from the input and the
stage's answer (its confidences), whether that answer is right."""

from __future__ import annotations

import numpy as np

from ponder.cascade.outcomes import CONFIDENCES, Outcomes
from ponder.cascade.rules import Rule, register
from ponder.cascade.rules._classifier import Scorer


def _answer_features(data: Outcomes, k: int) -> np.ndarray:
    """[n, F + 3]: the input features and stage k's three confidences."""
    conf = np.stack([data.confidence[c][k] for c in CONFIDENCES], 1)
    return np.concatenate([data.features, conf], 1)


@register
class Frugal(Rule):
    name = "frugal"
    sequential = True

    def __init__(self) -> None:
        self.scorers: list[Scorer] = []

    def fit(self, data: Outcomes, *, seed: int) -> None:
        self.scorers = [Scorer(seed=seed).fit(_answer_features(data, k), data.correct[k])
                        for k in range(data.k - 1)]

    def scores(self, data: Outcomes) -> np.ndarray:
        return np.stack([s.predict(_answer_features(data, k)) for k, s in enumerate(self.scorers)])
