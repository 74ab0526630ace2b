"""Synthetic outcomes with known answers: each run's correctness is set per example."""

from __future__ import annotations

import numpy as np

from ponder.cascade.outcomes import CONFIDENCES, Outcomes


def outcomes(correct: np.ndarray, *, complexity: np.ndarray, flops=(1.0, 10.0),
             seed: int = 0) -> Outcomes:
    """``correct`` [K, n]. Confidence is high (0.9..1) where a run is right and low (0..0.5)
    where it is wrong; the input features hold the complexity (so it is learnable from the
    input) and noise."""
    rng = np.random.default_rng(seed)
    k, n = correct.shape
    conf = np.where(correct, rng.uniform(0.9, 1.0, (k, n)), rng.uniform(0.0, 0.5, (k, n)))
    feats = np.stack([complexity.astype(float), rng.normal(size=n)], 1)
    return Outcomes([f"m{i}" for i in range(k)], correct.astype(bool),
                    {c: conf.copy() for c in CONFIDENCES},
                    np.repeat(np.asarray(flops, float)[:, None], n, 1),
                    np.repeat(np.asarray(flops, float)[:, None] * 1e-6, n, 1),
                    complexity.astype(int), feats)
