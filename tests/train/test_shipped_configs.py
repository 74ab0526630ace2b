"""Every shipped ``configs/*.yaml`` loads and names real tasks/policies/models; the demo's
YAMLs hold exactly the settings ``ponder demo`` trains with."""

from __future__ import annotations

from pathlib import Path

import pytest

from ponder.apps.demo import DEFAULT_THREADS, DEMO_RUNS, run_overrides
from ponder.train.config import load_config, to_dict, validate_names

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    validate_names(load_config(path))


@pytest.mark.parametrize("demo_run", DEMO_RUNS, ids=lambda r: r.policy)
def test_demo_yaml_matches_demo_settings(demo_run):
    shipped = to_dict(load_config(CONFIGS / f"demo_{demo_run.policy}.yaml"))
    # everything, step cap, thread count and target accuracy included: no wall-clock budget
    demo = to_dict(load_config(None, run_overrides(demo_run, threads=DEFAULT_THREADS)))
    assert shipped == demo and shipped["run"]["time_budget_s"] is None
