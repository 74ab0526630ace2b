"""Learn-then-Test: p-values against direct formulas, and the guarantee in a simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ponder.cascade.calibrate import hoeffding_bentkus_p_value, ltt_threshold
from ponder.cascade.outcomes import CONFIDENCES, Outcomes
from ponder.cascade.route import route
from ponder.policies.calibration import binomial_p_value


def _binom_cdf(k, n, p):
    return sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(k + 1))


@pytest.mark.parametrize("k,n,delta", [(0, 50, 0.1), (3, 50, 0.1), (12, 100, 0.1), (30, 100, 0.2)])
def test_p_values_against_formulas(k, n, delta):
    assert binomial_p_value(k, n, delta) == pytest.approx(_binom_cdf(k, n, delta), rel=1e-9)
    r = k / n
    hoeff = 1.0 if r >= delta else math.exp(-n * ((r * math.log(r / delta) if r else 0.0)
                                                   + (1 - r) * math.log((1 - r) / (1 - delta))))
    want = min(1.0, hoeff, math.e * _binom_cdf(math.ceil(k), n, delta))
    assert hoeffding_bentkus_p_value(k, n, delta) == pytest.approx(want, rel=1e-9)


def _world(n, rng):
    """Two runs; the large is always right. The small's confidence u ~ U(0, 1) and it is
    wrong with probability 1 − u, so the true risk at threshold λ (accept when u ≥ λ) is
    ∫_λ^1 (1 − u) du = (1 − λ)² / 2, known exactly."""
    u = rng.random(n)
    small = rng.random(n) < u
    correct = np.stack([small, np.ones(n, bool)])
    conf = {c: np.stack([u, np.ones(n)]) for c in CONFIDENCES}
    z = np.zeros((2, n))
    return Outcomes(["s", "l"], correct, conf, z + 1, z, np.zeros(n, int), np.zeros((n, 1)))


@pytest.mark.parametrize("p_value", ["binomial", "hb"])
def test_ltt_guarantee_holds_on_held_out_data(p_value):
    delta, epsilon, trials = 0.05, 0.1, 200
    rng = np.random.default_rng(0)
    violations = 0
    held_out = _world(20000, np.random.default_rng(99))
    for _ in range(trials):
        cal = _world(300, rng)
        lam, _ = ltt_threshold(cal, cal.confidence["max_softmax"][:1], sequential=True,
                               delta=delta, epsilon=epsilon, p_value=p_value)
        true_risk = (1 - min(lam, 1.0)) ** 2 / 2
        violations += true_risk > delta
    # The guarantee: P(risk > δ) ≤ ε. 200 trials: allow binomial noise around ε (3 sd).
    assert violations / trials <= epsilon + 3 * math.sqrt(epsilon * (1 - epsilon) / trials)
    # The last λ certified is not trivially conservative, and on held-out data its
    # error gap to the large run stays within δ.
    r = route(held_out, held_out.confidence["max_softmax"][:1], lam, sequential=True)
    assert lam < 1.0
    assert 1.0 - r.correct.mean() <= delta + 0.01


def test_ltt_without_any_certified_threshold_defers_everything():
    rng = np.random.default_rng(0)
    cal = _world(30, rng)
    lam, tested = ltt_threshold(cal, cal.confidence["max_softmax"][:1], sequential=True,
                                delta=0.001, epsilon=0.01)
    assert lam == math.inf
