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


# -- the nonlinear probe: telling an online policy from an early one ---------------------------
def _policy_records(policy: str, *, n_examples: int = 250, seed: int = 3):
    """Synthetic records whose steps an *online* policy takes from an execution feature
    (non-monotone in ``frontier_size``: a line cannot follow it) and an *early* policy from a
    static cue (the token's identity, readable before any computation); ±1 step of noise."""
    from ponder_analysis_synth import make_records

    frame = make_records("valid", n_examples=n_examples, policy="fixed", seed=seed)
    rng = np.random.default_rng(seed)
    noise = rng.integers(-1, 2, size=len(frame))
    if policy == "online":
        base = 2 + 5 * (frame["feat_frontier_size"].to_numpy().astype(int) % 3)
    else:
        base = frame["token"].map({"_a": 2, "_b": 12, "_c": 5, "_d": 9}).to_numpy()
    frame["steps"] = np.clip(base + noise, 1, 16).astype(np.int64)
    return frame


def test_the_nonlinear_probe_tells_an_online_policy_from_an_early_one():
    online = timing.analyse_split(_policy_records("online"), n_boot=100)
    early = timing.analyse_split(_policy_records("early"), n_boot=100)
    on, ea = online["nonlinear"], early["nonlinear"]
    assert on["explained_by"] == "execution" and ea["explained_by"] == "static"
    # the winning group explains most of the variance, the other almost none; CIs agree
    assert on["r2"]["execution"] > 0.7 and on["r2"]["static"] < 0.1
    assert ea["r2"]["static"] > 0.7 and ea["r2"]["execution"] < 0.1
    assert on["execution_minus_static"]["ci"][0] > 0.5 and ea["execution_minus_static"]["ci"][1] < -0.5
    for probe in (on, ea):
        for name, (lo, hi) in probe["ci"].items():
            assert lo <= probe["r2"][name] <= hi
    # the linear probe cannot see the online policy's non-monotone rule
    assert online["r2"]["execution"] < on["r2"]["execution"] - 0.3


def test_the_nonlinear_probe_splits_by_example_and_finds_nothing_in_noise(make_run):
    frame = load(make_run(policy="random", n_examples=200)).split("valid")
    probe = timing.analyse_split(frame, n_boot=50)["nonlinear"]
    assert probe["explained_by"] in ("nothing", "undecided")
    assert probe["r2"]["both"] < 0.1
    assert probe["n_fit"] + probe["n_heldout"] == len(frame)
    assert 0 < probe["n_heldout_examples"] < 200


def test_bootstrap_resamples_whole_examples():
    """A slow reference: the same resampling, written out example by example."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(6), [3, 1, 4, 2, 2, 3])
    y = rng.normal(size=len(groups))
    pred = y + rng.normal(scale=0.5, size=len(groups))
    fast = timing._bootstrap_r2(y, {"p": pred}, groups, np.random.default_rng(9), 20)["p"]
    ref_rng = np.random.default_rng(9)
    from sklearn.metrics import r2_score
    for b in range(20):
        drawn = ref_rng.integers(0, 6, size=6)
        rows = [i for k in drawn for i in range(len(groups)) if groups[i] == k]
        assert fast[b] == pytest.approx(r2_score(y[rows], pred[rows]))


def test_declared_groups_decide_and_label_features_are_dropped():
    import pandas as pd

    declared = timing.declared_groups("list_rank")
    assert declared is not None and "unseen_label" in declared[1]
    frame = pd.DataFrame({
        "split": "valid", "example": [0, 0, 0, 1, 1], "position": [1, 2, 3, 1, 2],
        "token": ["a", "b", "c", "a", "b"], "steps": [1, 2, 3, 1, 2],
        "feat_position": [1.0, 2, 3, 1, 2], "feat_m": [3.0, 3, 3, 2, 2],
        "feat_is_last": [0.0, 0, 1, 0, 1], "feat_hops_to_head": [0.0, 1, 2, 0, 1],
        "feat_unseen_label": [0.0, 0, 0, 0, 0]})
    table, static, execution, _ = timing.feature_groups(frame, declared=declared)
    assert execution == ["hops_to_head"]
    assert "is_last" in static and "m" in static   # varies within an example, yet a static cue
    assert "unseen_label" not in static + execution and "unseen_label" not in table
    assert timing.declared_groups("synth_toposort") is None
