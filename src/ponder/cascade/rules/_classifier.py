"""The small correctness classifier shared by ``frugal`` and ``router``."""

from __future__ import annotations

import numpy as np


class Scorer:
    """Logistic regression on standardised features, predicting P(label = 1).
    A constant label (nothing to learn) gives that constant."""

    def __init__(self, *, seed: int) -> None:
        self.seed = seed
        self.constant: float | None = None
        self.model = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Scorer":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        y = y.astype(int)
        if y.min() == y.max():
            self.constant = float(y[0])
            return self
        self.model = make_pipeline(StandardScaler(),
                                   LogisticRegression(C=1.0, max_iter=2000, random_state=self.seed))
        self.model.fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """[n] probabilities."""
        if self.constant is not None:
            return np.full(len(x), self.constant)
        return self.model.predict_proba(x)[:, 1]
