"""Every shipped ``configs/*.yaml`` loads and names real tasks/policies/models; the demo's
YAMLs hold exactly the settings ``ponder demo`` trains with."""

from __future__ import annotations

from pathlib import Path

import pytest

from ponder.apps.demo import COMMON, DEMO_RUNS
from ponder.train.config import load_config, to_dict, validate_names

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# set by the demo per call (its budget and thread count), so not compared
PER_CALL = ("threads", "time_budget_s", "stop_at_acc")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    validate_names(load_config(path))


@pytest.mark.parametrize("demo_run", DEMO_RUNS, ids=lambda r: r.policy)
def test_demo_yaml_matches_demo_settings(demo_run):
    shipped = to_dict(load_config(CONFIGS / f"demo_{demo_run.policy}.yaml"))
    demo = to_dict(load_config(None, [*COMMON, *demo_run.overrides]))
    for key in PER_CALL:
        shipped["run"].pop(key), demo["run"].pop(key)
    assert shipped == demo
