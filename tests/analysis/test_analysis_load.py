import json

import pandas as pd
import pytest

from ponder.analysis import load
from ponder.errors import CheckpointError, ConfigError
from ponder.eval.records import FIXED_COLUMNS, RECORDS_VERSION


def test_load_reads_every_split_with_info_and_summaries(make_run):
    run = load(make_run(policy="noisy", splits=("valid", "test", "ood"), n_examples=20))
    assert run.splits == ["valid", "test", "ood"]
    assert set(run.records["split"]) == {"valid", "test", "ood"}
    assert all(c in run.records.columns for c in FIXED_COLUMNS)
    assert run.info["policy"] == "noisy" and run.info["max_steps"] == 16
    assert run.param_columns == ["param_n"]
    assert "feat_frontier_size" in run.feature_columns
    assert run.config["policy"]["name"] == "noisy"
    valid = run.split("valid")
    assert run.summaries["valid"]["n_tokens"] == len(valid)
    assert run.summaries["valid"]["token_steps"] == int(valid["steps"].sum())


def test_summary_is_derived_from_records_when_the_json_is_missing(make_run):
    run = load(make_run(with_summary=False, n_examples=10))
    s, frame = run.summaries["valid"], run.split("valid")
    assert s["derived_from_records"] and s["wall_s"] is None
    assert s["fixed_token_steps"] == len(frame) * 16
    assert s["token_acc"] == pytest.approx(frame["correct"].mean())


def test_load_only_requested_splits(make_run):
    run_dir = make_run(n_examples=5)
    assert load(run_dir, splits=["ood"]).splits == ["ood"]
    with pytest.raises(CheckpointError, match="no eval records for split"):
        load(run_dir, splits=["test"])


def test_missing_dir_and_missing_records(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope")
    (tmp_path / "empty" / "eval").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no eval records"):
        load(tmp_path / "empty")


def test_other_version_is_refused(make_run):
    with pytest.raises(CheckpointError, match=f"version {RECORDS_VERSION + 1}"):
        load(make_run(version=RECORDS_VERSION + 1, n_examples=3))


def test_parquet_without_metadata_or_columns_is_refused(tmp_path, synth):
    run_dir = tmp_path / "r"
    (run_dir / "eval").mkdir(parents=True)
    pd.DataFrame({"example": [0]}).to_parquet(run_dir / "eval" / "valid.parquet")
    with pytest.raises(CheckpointError, match="ponder_records_version"):
        load(run_dir)
    synth.write_records(run_dir / "eval" / "valid.parquet", pd.DataFrame({"example": [0]}), info={})
    with pytest.raises(CheckpointError, match="lacks record columns"):
        load(run_dir)
    (run_dir / "eval" / "valid.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        load(run_dir)


def test_malformed_config_and_summary(make_run):
    run_dir = make_run(n_examples=3)
    (run_dir / "eval" / "valid.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        load(run_dir)
    (run_dir / "eval" / "valid.json").write_text(json.dumps({"wall_s": 1.5}))
    assert load(run_dir).summaries["valid"]["wall_s"] == 1.5
    (run_dir / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="malformed"):
        load(run_dir)


def test_labels_name_the_mechanism(make_run):
    """A run is labelled by what decides its compute: the policy, or AdaTape (whose model
    runs its steps under the fixed policy)."""
    run = load(make_run("deep", policy="noisy"))
    assert run.label == "deep (noisy)"
    run.info["model_kind"] = "adatape"
    run.info["policy"] = "fixed"
    assert run.mechanism == "adatape" and run.label == "deep (adatape)"
    assert load(make_run("noisy", policy="noisy")).label == "noisy"
