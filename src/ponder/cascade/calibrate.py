"""Choosing thresholds: Learn-then-Test for a risk target, or a budgeted search.

**Risk target (Learn-then-Test).** One threshold λ is shared by every stage. The loss of
example i at λ is ``1[the cascade's answer is wrong and the largest run's is right]``; its
mean upper-bounds ``err(cascade) − err(largest)``. For each candidate λ, from the most
conservative (largest: everything goes to the largest run) down, the null "risk(λ) > δ" is
tested with a p-value — the binomial tail ``P[Binom(n, δ) ≤ k]`` or Hoeffding–Bentkus — and
fixed-sequence testing (:func:`ponder.policies.calibration.fixed_sequence_test`) stops at the
first λ not rejected. Guarantee: on i.i.d. data, with probability ≥ 1 − ε over the
calibration sample, the chosen λ has ``err(cascade) ≤ err(largest) + δ`` on fresh examples.
λ = +∞ (always defer) has zero loss and is always admissible, so it is the fallback.

**Budget.** Per-stage thresholds searched on a grid of score quantiles to maximise accuracy
with mean FLOPs per example ≤ budget × the largest run's mean FLOPs (FrugalGPT's objective).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from ponder.cascade.outcomes import Outcomes
from ponder.cascade.route import route
from ponder.errors import ConfigError
from ponder.policies.calibration import binomial_p_value, check_levels, fixed_sequence_test

GRID = 12  # quantiles per stage in the budget search


def hoeffding_bentkus_p_value(k: int, n: int, delta: float) -> float:
    """Hoeffding–Bentkus p-value of H: risk > δ for a [0, 1] loss with mean k/n
    (Bates et al. 2021): ``min(exp(−n·h(r̂, δ)), e·P[Binom(n, δ) ≤ ⌈n r̂⌉])``, h the
    binary KL divergence, the Hoeffding term 1 when r̂ ≥ δ."""
    r = k / n
    if r >= delta:
        hoeffding = 1.0
    else:
        h = (r * math.log(r / delta) if r > 0 else 0.0) + (1 - r) * math.log((1 - r) / (1 - delta))
        hoeffding = math.exp(-n * h)
    bentkus = math.e * binomial_p_value(math.ceil(n * r), n, delta)
    return min(1.0, hoeffding, bentkus)


P_VALUES: dict[str, Callable[[int, int, float], float]] = {
    "binomial": binomial_p_value, "hb": hoeffding_bentkus_p_value}


def candidates(scores: np.ndarray) -> np.ndarray:
    """Every distinct score (each is where a decision changes) plus +∞, ascending."""
    return np.append(np.unique(scores), np.inf)


def ltt_threshold(data: Outcomes, scores: np.ndarray, *, sequential: bool, delta: float,
                  epsilon: float, p_value: str = "binomial") -> tuple[float, list]:
    """(λ, tested): the smallest certified shared threshold, and the test log."""
    check_levels(delta, epsilon)
    if p_value not in P_VALUES:
        raise ConfigError(f"unknown p-value {p_value!r}; choose from {', '.join(P_VALUES)}")
    lams = candidates(scores)
    last_right = data.correct[-1]
    losses = [int(np.sum(~route(data, scores, lam, sequential=sequential).correct & last_right))
              for lam in lams]
    result = fixed_sequence_test(list(lams), losses, data.correct.shape[1], delta=delta,
                                 epsilon=epsilon, p_value=P_VALUES[p_value])
    return (math.inf if result.threshold is None else result.threshold), result.tested


def budget_thresholds(data: Outcomes, scores: np.ndarray, *, sequential: bool,
                      budget: float) -> np.ndarray:
    """[K-1] thresholds of the highest accuracy with mean FLOPs ≤ budget × largest's mean."""
    if not (isinstance(budget, (int, float)) and budget > 0):
        raise ConfigError(f"--budget must be > 0 (a fraction of the largest run's cost), got {budget!r}")
    limit = budget * float(data.flops[-1].mean())
    grids = [np.append(np.unique(np.quantile(s, np.linspace(0, 1, GRID))), np.inf) for s in scores]
    best, best_key = None, None
    for thr in itertools.product(*grids):
        r = route(data, scores, np.array(thr), sequential=sequential)
        cost = float(r.flops.mean())
        if cost > limit * (1 + 1e-12):
            continue
        key = (float(r.correct.mean()), -cost)
        if best_key is None or key > best_key:
            best, best_key = np.array(thr), key
    if best is None:
        raise ConfigError(f"no thresholds meet --budget {budget} (even the cheapest routing costs more)")
    return best
