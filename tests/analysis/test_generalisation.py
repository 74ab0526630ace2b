import pytest

from ponder.analysis import generalisation, load


def test_per_knob_tables_and_training_range(make_run):
    run = load(make_run(policy="input_size", n_examples=120))
    result = generalisation.analyse(run)
    assert set(result) == {"valid", "ood"}
    valid_rows = result["valid"]["by_knob"]["n"]
    ood_rows = result["ood"]["by_knob"]["n"]
    assert tuple(result["valid"]["train_range"]["n"]) == (4.0, 8.0)
    assert all(r["in_train_range"] for r in valid_rows)
    assert not any(r["in_train_range"] for r in ood_rows)
    frame = run.split("ood")
    for row in ood_rows:
        sub = frame[frame["param_n"] == row["value"]]
        assert row["n"] == len(sub)
        assert row["accuracy"] == pytest.approx(sub["correct"].mean())
        assert row["mean_steps"] == pytest.approx(row["value"])  # this policy spends n steps


def test_allocates_more_but_still_fails_is_flagged(make_run):
    run = load(make_run(policy="input_size", n_examples=120))
    cmp = generalisation.analyse(run)["ood"]["vs_in_distribution"]
    assert cmp["reference"] == "valid"
    assert cmp["delta_mean_steps"] > 0 and cmp["delta_accuracy"] < 0
    assert cmp["allocates_more_still_fails"]
    fixed = generalisation.analyse(load(make_run("fixed", policy="fixed", n_examples=120)))
    assert not fixed["ood"]["vs_in_distribution"]["allocates_more_still_fails"]
    assert "vs_in_distribution" not in fixed["valid"]


def test_seen_and_unseen_labels_apart(make_run):
    run = load(make_run(n_examples=120))
    labels = generalisation.analyse(run)["ood"]["labels"]
    frame = run.split("ood")
    assert labels["seen"]["n"] + labels["unseen"]["n"] == len(frame)
    assert labels["unseen"]["n"] == int((~frame["seen_label"]).sum()) > 0
    assert labels["unseen"]["accuracy"] == 0.0  # synthetic unseen labels are never right
    assert labels["seen"]["accuracy"] == pytest.approx(frame[frame["seen_label"]]["correct"].mean())


def test_list_valued_knobs_get_no_per_value_table(make_run):
    """A knob holding a list per example (agreement's ``plural``) is left out of the per-knob
    tables instead of failing the analysis; the scalar knobs are still there."""
    run = load(make_run(policy="input_size", n_examples=40))
    run.records["param_plural"] = [[True, False]] * len(run.records)
    result = generalisation.analyse(run)
    assert set(result["valid"]["by_knob"]) == {"n"}
