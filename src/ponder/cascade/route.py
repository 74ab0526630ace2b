"""Apply acceptance scores and thresholds: which run answers each example, and at what cost."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ponder.cascade.outcomes import Outcomes


@dataclass
class Routing:
    """chosen [n] run index that answers; correct [n]; flops, wall_s [n] cost paid."""

    chosen: np.ndarray
    correct: np.ndarray
    flops: np.ndarray
    wall_s: np.ndarray


def route(data: Outcomes, scores: np.ndarray, thresholds, *, sequential: bool) -> Routing:
    """``scores`` [K-1, n]; ``thresholds`` [K-1] (or one shared float). A sequential cascade
    pays for every run up to the chosen one; a router for the chosen one only."""
    k, n = data.k, data.correct.shape[1]
    thr = np.broadcast_to(np.asarray(thresholds, dtype=float), (k - 1,))
    accept = scores >= thr[:, None]                                         # [K-1, n]
    accept = np.concatenate([accept, np.ones((1, n), bool)])                # last always answers
    chosen = accept.argmax(0)
    cols = np.arange(n)
    if sequential:
        flops = np.cumsum(data.flops, 0)[chosen, cols]
        wall = np.cumsum(data.wall_s, 0)[chosen, cols]
    else:
        flops, wall = data.flops[chosen, cols], data.wall_s[chosen, cols]
    return Routing(chosen, data.correct[chosen, cols], flops, wall)
