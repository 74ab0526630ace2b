"""Fixtures of the analysis tests: synthetic run directories with the exact record schema."""

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("ponder_analysis_synth", Path(__file__).with_name("synth.py"))
synth_module = importlib.util.module_from_spec(_spec)
sys.modules["ponder_analysis_synth"] = synth_module
_spec.loader.exec_module(synth_module)


@pytest.fixture
def synth():
    return synth_module


@pytest.fixture
def make_run(tmp_path):
    """``make_run(name, policy=..., **kw)`` → a fake RUN_DIR under tmp_path."""
    def make(name: str = "run", **kwargs):
        return synth_module.write_run(tmp_path, name, **kwargs)
    return make
