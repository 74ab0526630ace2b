"""Config merge order and every kind of bad config → one ConfigError line / exit 2."""

from __future__ import annotations

import pytest

from ponder.cli import main
from ponder.errors import ConfigError
from ponder.train.config import TrainConfig, load_config, merge_config, to_dict, validate_names


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_then_yaml_then_overrides(tmp_path):
    p = write(tmp_path, "run:\n  steps: 7\n  batch_size: 16\npolicy:\n  name: pondernet\n"
                        "  knobs: {beta: 0.05}\nmodel:\n  d_model: 32\n")
    cfg = load_config(p, ["run.steps=9", "policy.knobs.lambda_p=0.3", "optim.betas=[0.8,0.9]"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.run.steps == 9                       # override beats YAML
    assert cfg.run.batch_size == 16                 # YAML beats default
    assert cfg.run.eval_every == TrainConfig().run.eval_every  # default kept
    assert cfg.model.d_model == 32 and cfg.model.n_heads == TrainConfig().model.n_heads
    assert dict(cfg.policy.knobs) == {"beta": 0.05, "lambda_p": 0.3}
    assert list(cfg.optim.betas) == [0.8, 0.9]
    # the saved form round-trips
    assert to_dict(merge_config(to_dict(cfg))) == to_dict(cfg)


@pytest.mark.parametrize("text, overrides, fragment", [
    ("run: [1,\n  2", [], "malformed YAML"),
    ("run:\n  stepz: 3\n", [], "stepz"),
    ("", ["run.bogus=1"], "bogus"),
    ("", ["nosection.x=1"], "nosection"),
    ("run:\n  steps: many\n", [], "many"),
    ("", ["run.batch_size=abc"], "abc"),
    ("- a\n- b\n", [], "mapping"),
    ("", ["run.steps"], "key=value"),
    ("", ["run.batch_size=0"], "batch_size"),
    ("", ["model.d_model=30", "model.n_heads=4"], "divisible"),
    ("", ["optim.lr=-1"], "optim.lr"),
])
def test_bad_configs_raise_config_error(tmp_path, text, overrides, fragment):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p, overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("override, fragment", [
    ("task.name=no_such_task", "no_such_task"),
    ("policy.name=no_such_policy", "no_such_policy"),
    ("model.kind=no_such_kind", "no_such_kind"),
    ("task.knobs.m_max=100000", "m_max"),
    ("policy.knobs.no_such_knob=1", "no_such_knob"),
])
def test_names_are_validated_with_the_registries(override, fragment):
    cfg = load_config(None, ["task.name=list_rank", override])
    with pytest.raises(ConfigError) as info:
        validate_names(cfg)
    assert fragment in str(info.value)


@pytest.mark.parametrize("text, overrides", [
    ("run: [1,\n", []),
    ("run:\n  stepz: 3\n", []),
    ("run:\n  steps: many\n", []),
    ("", ["task.name=no_such_task"]),
])
def test_cli_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, text, overrides):
    p = write(tmp_path, text)
    out = tmp_path / "run"
    code = main(["train", str(p), *overrides, "--out", str(out), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("ponder")
    assert not out.exists()


def test_knob_errors_name_their_key_path_and_cli_knobs_replace_the_files():
    import pytest as _pytest
    from ponder.errors import ConfigError as _ConfigError
    from ponder.train.config import merge_config as _merge, validate_names as _validate

    base = {"task": {"name": "list_rank", "knobs": {"m_min": 4, "m_max": 10}}}
    with _pytest.raises(_ConfigError, match=r"^task\.knobs\.m_max='abc'"):
        _validate(_merge(base, ["task.knobs.m_max=abc"]))
    with _pytest.raises(_ConfigError, match=r"^policy\.knobs\."):
        _validate(_merge(base, ["policy.name=act", "policy.knobs.tau=abc"]))
    assert dict(_merge(base, ["task.knobs={m_min: 3}"]).task.knobs) == {"m_min": 3}
    assert dict(_merge(base, ["task.knobs.m_min=3"]).task.knobs) == {"m_min": 3, "m_max": 10}
