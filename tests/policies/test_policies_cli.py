"""``ponder policies list`` and the registry's error paths."""

from __future__ import annotations

import pytest

import ponder.policies as policies
from ponder.cli import main
from ponder.errors import ConfigError


def test_list_shows_every_policy(capsys):
    assert main(["policies", "list"]) == 0
    text = capsys.readouterr().out
    for name in policies.names():
        assert name in text
    assert "halt_bias=-3.0" in text and "online" in text and "early" in text


def test_unknown_policy_and_bad_knobs():
    with pytest.raises(ConfigError, match="unknown policy"):
        policies.get("nope")
    with pytest.raises(ConfigError, match="no knob"):
        policies.get("pondernet", gamma=1)
    with pytest.raises(ConfigError, match="out of range"):
        policies.get("pondernet", beta=-1.0)
    with pytest.raises(ConfigError, match="one of"):
        policies.get("anira_e", inference="sample")


def test_cli_bad_subcommand_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["policies", "nonsense"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
