import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ponder.analysis import alignment


def frame_of(steps, complexity, correct=None):
    steps, complexity = np.asarray(steps), np.asarray(complexity)
    return pd.DataFrame({"steps": steps, "complexity": complexity,
                         "correct": np.ones(len(steps), bool) if correct is None else correct})


def test_steps_equal_to_complexity_give_rho_one(make_run, synth):
    from ponder.analysis import load
    run = load(make_run(policy="complexity", n_examples=80))
    for split in run.splits:
        result = alignment.analyse_split(run.split(split))
        assert result["rho"] == pytest.approx(1.0)
        assert result["ci95"] == pytest.approx((1.0, 1.0))
        assert result["correct"]["rho"] == pytest.approx(1.0)
        assert all(r["mean_steps"] == r["complexity"] and r["std_steps"] == 0 for r in result["by_complexity"])


def test_random_steps_give_small_rho_with_an_interval_around_zero(make_run):
    from ponder.analysis import load
    run = load(make_run(policy="random", n_examples=400))
    result = alignment.analyse_split(run.split("valid"))
    assert abs(result["rho"]) < 0.06
    lo, hi = result["ci95"]
    assert lo < 0 < hi and hi - lo < 0.15


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_table_spearman_equals_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    steps = rng.integers(1, 6, size=500)
    complexity = np.clip(steps + rng.integers(-2, 3, size=500), 0, None)
    _, _, counts = alignment.contingency(steps, complexity)
    assert alignment.spearman_from_table(counts) == pytest.approx(stats.spearmanr(steps, complexity).statistic)


def test_each_bootstrap_table_matches_scipy_on_the_expanded_sample():
    """A multinomial draw of the table is a token resample: ρ must equal scipy's on it."""
    rng = np.random.default_rng(3)
    steps = rng.integers(1, 8, size=300)
    complexity = steps // 2 + rng.integers(0, 3, size=300)
    s_vals, c_vals, counts = alignment.contingency(steps, complexity)
    draws = rng.multinomial(300, counts.ravel() / 300, size=5).reshape((5,) + counts.shape)
    fast = alignment.spearman_from_table(draws)
    for b in range(5):
        i, j = np.nonzero(draws[b])
        reps = draws[b][i, j]
        slow = stats.spearmanr(np.repeat(s_vals[i], reps), np.repeat(c_vals[j], reps)).statistic
        assert fast[b] == pytest.approx(slow)


def test_bootstrap_interval_agrees_with_a_slow_resampling_loop():
    rng = np.random.default_rng(4)
    steps = rng.integers(1, 6, size=400)
    complexity = np.clip(steps + rng.integers(-3, 4, size=400), 0, None)
    fast = alignment.bootstrap_ci(alignment.contingency(steps, complexity)[2], n_boot=2000, seed=0)
    loop = np.random.default_rng(1)
    rhos = []
    for _ in range(600):
        idx = loop.integers(0, 400, size=400)
        rhos.append(stats.spearmanr(steps[idx], complexity[idx]).statistic)
    slow = np.quantile(rhos, [0.025, 0.975])
    assert fast == pytest.approx(tuple(slow), abs=0.02)
    assert fast == alignment.bootstrap_ci(alignment.contingency(steps, complexity)[2], n_boot=2000, seed=0)


def test_correct_tokens_only_and_levels():
    steps = np.array([1, 2, 3, 4, 1, 5, 5, 2])
    complexity = np.array([0, 1, 2, 3, 3, 0, 1, 2])
    correct = np.array([True, True, True, True, False, False, False, False])
    result = alignment.analyse_split(frame_of(steps, complexity, correct))
    assert result["correct"]["n"] == 4 and result["correct"]["rho"] == pytest.approx(1.0)
    assert result["rho"] == pytest.approx(stats.spearmanr(steps, complexity).statistic)
    levels = {r["complexity"]: r for r in result["by_complexity"]}
    assert levels[3]["n"] == 2 and levels[3]["mean_steps"] == 2.5 and levels[3]["accuracy"] == 0.5
    heat = result["heatmap"]
    assert heat["steps"] == [1, 2, 3, 4, 5] and heat["complexity"] == [0, 1, 2, 3]
    assert np.asarray(heat["counts"]).sum() == 8 and heat["counts"][0] == [1, 0, 0, 1]


def test_constant_steps_leave_rho_undefined():
    result = alignment.analyse_split(frame_of([4] * 10, list(range(10))))
    assert result["rho"] is None and result["ci95"] is None


def test_example_bootstrap_resamples_whole_examples():
    """Every example repeats one (steps, complexity) pair k times: resampling examples must
    give the interval of the E distinct pairs (ρ is unchanged by replicating every row), while
    resampling tokens would pretend E·k independent tokens and be ~√k narrower."""
    rng = np.random.default_rng(5)
    E, k = 120, 10
    steps = rng.integers(1, 6, size=E)
    complexity = np.clip(steps + rng.integers(-3, 4, size=E), 0, None)
    frame = pd.DataFrame({"steps": np.repeat(steps, k), "complexity": np.repeat(complexity, k),
                          "example": np.repeat(np.arange(E), k), "correct": True})
    clustered = alignment.correlation(frame)
    assert clustered["resampled"] == "examples"
    distinct = alignment.bootstrap_ci(alignment.contingency(steps, complexity)[2])
    assert clustered["ci95"] == pytest.approx(distinct, abs=0.03)
    tokens = alignment.bootstrap_ci(alignment.contingency(frame["steps"].to_numpy(),
                                                          frame["complexity"].to_numpy())[2])
    width = lambda ci: ci[1] - ci[0]
    assert width(clustered["ci95"]) > 2.5 * width(tokens)


def test_example_bootstrap_agrees_with_a_slow_loop_over_examples():
    rng = np.random.default_rng(6)
    E = 80
    sizes = rng.integers(2, 9, size=E)
    example = np.repeat(np.arange(E), sizes)
    base = rng.integers(1, 6, size=E)   # a per-example level: tokens of one example are alike
    steps = np.repeat(base, sizes) + rng.integers(0, 2, size=len(example))
    complexity = np.clip(steps + rng.integers(-2, 3, size=len(example)), 0, None)
    fast = alignment.cluster_bootstrap_ci(alignment.example_tables(steps, complexity, example), seed=0)
    loop = np.random.default_rng(1)
    rows_of = [np.nonzero(example == e)[0] for e in range(E)]
    rhos = []
    for _ in range(600):
        idx = np.concatenate([rows_of[e] for e in loop.integers(0, E, size=E)])
        rhos.append(stats.spearmanr(steps[idx], complexity[idx]).statistic)
    assert fast == pytest.approx(tuple(np.quantile(rhos, [0.025, 0.975])), abs=0.03)
