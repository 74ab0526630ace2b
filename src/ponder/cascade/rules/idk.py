"""IDK cascade (Wang et al. 2017): a stage answers when its own confidence passes its threshold."""

from __future__ import annotations

import numpy as np

from ponder.cascade.outcomes import CONFIDENCES, Outcomes
from ponder.cascade.rules import Rule, register
from ponder.errors import ConfigError


@register
class IDK(Rule):
    name = "idk"
    sequential = True

    def __init__(self, *, confidence: str = "max_softmax") -> None:
        if confidence not in CONFIDENCES:
            raise ConfigError(f"unknown confidence {confidence!r}; choose from {', '.join(CONFIDENCES)}")
        self.confidence = confidence

    def scores(self, data: Outcomes) -> np.ndarray:
        return data.confidence[self.confidence][:-1]
