import numpy as np
import pytest

from ponder.analysis import load, timing


def test_feature_groups_split_static_from_execution(make_run):
    run = load(make_run(n_examples=20))
    _, static, execution, categorical = timing.feature_groups(run.split("valid"))
    assert static == ["position", "input_size", "token", "param:n", "n"]
    assert execution == ["frontier_size", "dfs_depth", "newly_enabled"]
    assert categorical == ["token"]


def test_a_feature_is_in_the_same_group_in_every_split(make_run):
    run = load(make_run(n_examples=20))
    records = run.records.copy()
    # constant within each valid example, varying within ood examples
    records["feat_flag"] = np.where(records["split"] == "ood", records["position"] % 2, 0.0)
    valid = records[records["split"] == "valid"]
    assert "flag" in timing.feature_groups(valid)[1]
    _, static, execution, _ = timing.feature_groups(valid, groups_from=records)
    assert "flag" in execution and "flag" not in static


def test_steps_equal_to_input_size_are_explained_by_the_static_group(make_run):
    run = load(make_run(policy="input_size", n_examples=300))
    for split in run.splits:
        t = timing.analyse_split(run.split(split))
        assert t["r2"]["static"] == pytest.approx(1.0, abs=1e-6)
        assert t["r2"]["execution"] < 0.5
        assert t["group_importance"]["static"]["mean"] > 0.5
        assert abs(t["group_importance"]["execution"]["mean"]) < 0.01
        assert t["static_share"] > 0.99
        part = t["r2_partition"]
        assert part["execution_unique"] == pytest.approx(0.0, abs=1e-6)
        assert part["static_unique"] == pytest.approx(1.0 - t["r2"]["execution"])
        assert part["shared"] == pytest.approx(t["r2"]["execution"])
        assert t["feature_importance"][0]["group"] == "static"


def test_steps_following_frontier_size_are_explained_by_the_execution_group(make_run):
    run = load(make_run(policy="frontier", n_examples=300))
    for split in run.splits:
        t = timing.analyse_split(run.split(split))
        assert t["r2"]["execution"] == pytest.approx(1.0, abs=1e-6)
        assert t["r2"]["static"] < 0.5
        assert t["group_importance"]["execution"]["mean"] > 0.5
        assert abs(t["group_importance"]["static"]["mean"]) < 0.01
        assert t["static_share"] < 0.01
        assert t["r2_partition"]["static_unique"] == pytest.approx(0.0, abs=1e-6)
        assert t["r2_partition"]["execution_unique"] > 0.5
        assert t["feature_importance"][0]["feature"] == "frontier_size"


def test_random_steps_are_explained_by_nothing(make_run):
    t = timing.analyse_split(load(make_run(policy="random", n_examples=300)).split("valid"))
    assert t["r2"]["both"] < 0.05
    assert t["static_share"] is None and "explains" in t["note"]


def test_constant_steps_have_nothing_to_explain(make_run):
    t = timing.analyse_split(load(make_run(policy="fixed", n_examples=30)).split("valid"))
    assert t["r2"] is None and "constant" in t["note"]


def test_large_inputs_are_subsampled_and_seeded(make_run, monkeypatch):
    monkeypatch.setattr(timing, "MAX_ROWS", 400)
    frame = load(make_run(policy="noisy", n_examples=200)).split("valid")
    a = timing.analyse_split(frame, seed=5)
    b = timing.analyse_split(frame, seed=5)
    assert a["n_fit"] + a["n_heldout"] == 400
    assert a == b
    assert np.isfinite(a["r2"]["both"])


def test_permutation_drop_matches_a_slow_reference_and_sklearn():
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    y = 2 * x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.1, size=600)
    model = LinearRegression().fit(x, y)
    for cols in ([0], [1], [0, 2]):
        fast = timing.permutation_drop(x, y, model.coef_, model.intercept_, cols,
                                       np.random.default_rng(7), n_repeats=4)
        slow_rng = np.random.default_rng(7)
        base = r2_score(y, model.predict(x))
        slow = []
        for _ in range(4):
            order = slow_rng.permutation(len(x))
            shuffled = x.copy()
            shuffled[:, cols] = x[order][:, cols]
            slow.append(base - r2_score(y, model.predict(shuffled)))
        assert fast == pytest.approx(slow)
    reference = permutation_importance(model, x, y, scoring="r2", n_repeats=30, random_state=0)
    for j in range(3):
        ours = timing.permutation_drop(x, y, model.coef_, model.intercept_, [j],
                                       np.random.default_rng(1), n_repeats=30).mean()
        assert ours == pytest.approx(reference.importances_mean[j], abs=0.05)
