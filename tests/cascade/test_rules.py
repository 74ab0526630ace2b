"""Every registered rule on synthetic runs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ponder.cascade.calibrate import budget_thresholds, ltt_threshold
from ponder.cascade.route import route
from ponder.cascade.rules import RULES, build_rule
from ponder.cascade.run import deferral_by_complexity
from tests.cascade.synth import outcomes

N = 600
COMPLEXITY = np.arange(N) % 6          # levels 0..5; "easy" = level <= 2


def _fit_cal_test(correct, seed=0):
    data = outcomes(correct, complexity=COMPLEXITY, seed=seed)
    idx = np.random.default_rng(1).permutation(N)
    return [data.subset(np.sort(idx[a:b])) for a, b in ((0, 240), (240, 420), (420, N))]


def _run(name, correct, *, delta=0.02):
    rule = build_rule(name)
    fit, cal, test = _fit_cal_test(correct)
    rule.fit(fit, seed=0)
    lam, _ = ltt_threshold(cal, rule.scores(cal), sequential=rule.sequential, delta=delta, epsilon=0.1)
    return rule, test, route(test, rule.scores(test), lam, sequential=rule.sequential)


def test_route_matches_a_python_loop():
    rng = np.random.default_rng(0)
    data = outcomes(rng.random((3, 50)) < 0.5, complexity=np.arange(50) % 3, flops=(1, 3, 9))
    scores = rng.random((2, 50))
    thr = np.array([0.6, 0.3])
    for sequential in (True, False):
        r = route(data, scores, thr, sequential=sequential)
        for i in range(50):
            k = next((s for s in range(2) if scores[s, i] >= thr[s]), 2)
            assert r.chosen[i] == k and r.correct[i] == data.correct[k, i]
            want = sum(data.flops[j, i] for j in range(k + 1)) if sequential else data.flops[k, i]
            assert r.flops[i] == pytest.approx(want)


@pytest.mark.parametrize("name", sorted(RULES))
def test_small_always_right_answers_everything(name):
    correct = np.ones((2, N), bool)
    rule, test, r = _run(name, correct)
    assert (r.chosen == 0).all() and r.correct.all()
    assert r.flops.mean() == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(RULES))
def test_small_always_wrong_defers_everything(name):
    correct = np.stack([np.zeros(N, bool), np.ones(N, bool)])
    rule, test, r = _run(name, correct)
    assert (r.chosen == 1).all() and r.correct.all()
    assert r.flops.mean() == pytest.approx(11.0 if rule.sequential else 10.0)


@pytest.mark.parametrize("name", sorted(RULES))
def test_small_right_on_easy_examples_hard_ones_go_to_the_large(name):
    easy = COMPLEXITY <= 2
    correct = np.stack([easy, np.ones(N, bool)])
    rule, test, r = _run(name, correct)
    assert r.correct.mean() >= 0.98                    # within δ of the large run (always right)
    per_level = deferral_by_complexity(r, test)
    for level, row in per_level.items():
        if int(level) > 2:
            assert row["deferred"] >= 0.95, (level, row)
        else:
            assert row["deferred"] <= 0.1, (level, row)
    cost_large = 11.0 if rule.sequential else 10.0
    assert r.flops.mean() < 0.8 * cost_large          # the easy half is answered cheaply


@pytest.mark.parametrize("name", sorted(RULES))
def test_budget_search_respects_the_budget(name):
    easy = COMPLEXITY <= 2
    rule = build_rule(name)
    fit, cal, test = _fit_cal_test(np.stack([easy, np.ones(N, bool)]))
    rule.fit(fit, seed=0)
    thr = budget_thresholds(cal, rule.scores(cal), sequential=rule.sequential, budget=0.2)
    r = route(cal, rule.scores(cal), thr, sequential=rule.sequential)
    assert r.flops.mean() <= 0.2 * 10.0 + 1e-9
    # under a budget of the small run's own cost, everything stays with it
    assert (r.chosen == 0).mean() >= 0.88
