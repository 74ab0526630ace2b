"""The registry of cascade / routing rules, one module per rule.

A rule turns :class:`~ponder.cascade.outcomes.Outcomes` into *acceptance scores*
``[K-1, n]``: stage k (every run but the last) answers example i when
``score[k, i] >= threshold[k]`` and no earlier stage did; the last run answers the rest.
``sequential`` rules are cascades (every stage tried is paid for); the others are routers
(only the chosen run is paid for, the decision uses the input alone).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ponder.cascade.outcomes import Outcomes
from ponder.errors import ConfigError


class Rule:
    name: str = ""
    sequential: bool = True

    def fit(self, data: Outcomes, *, seed: int) -> None:
        """Learn whatever the rule learns from the fit part (default: nothing)."""

    def scores(self, data: Outcomes) -> np.ndarray:
        """Acceptance scores, [K-1, n]; larger = more willing to stop at that stage."""
        raise NotImplementedError


RULES: dict[str, Callable[..., Rule]] = {}


def register(cls):
    RULES[cls.name] = cls
    return cls


def build_rule(name: str, **knobs) -> Rule:
    if name not in RULES:
        raise ConfigError(f"unknown cascade rule {name!r}; rules: {', '.join(sorted(RULES))}")
    return RULES[name](**knobs)


from ponder.cascade.rules import frugal, idk, router  # noqa: E402,F401  (registration)
