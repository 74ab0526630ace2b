"""Accuracy against inference depth (``ponder eval --depths``): each point against a direct
forward at that loop count, the trained depth equal to the plain eval, the analysis section and
figure, and bad input → exit 2."""

from __future__ import annotations

import json

import pytest

from ponder.analysis.analyze import analyze_run
from ponder.cli import main
from ponder.train.config import load_config
from ponder.train.trainer import train
from tests.tiny_list_rank import direct_forward, tiny_config
from tests.runs import trained_run

TINY = tiny_config(30)
N = 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory, "curve", TINY, ["--n", str(N), "--batch-size", "7", "--depths", "1:6"])


def test_each_point_is_a_forward_at_that_depth(run_dir):
    curve = json.loads((run_dir / "eval" / "depth_curve.json").read_text())
    assert curve["trained_max_steps"] == 3 and curve["n"] == N
    for split in ("valid", "ood"):
        rows = curve["splits"][split]
        assert [r["steps"] for r in rows] == [1, 2, 3, 4, 5, 6]  # beyond the trained N = 3 too
        for r in rows:
            acc, steps = direct_forward(run_dir, split, r["steps"], N)
            assert r["token_acc"] == pytest.approx(acc, abs=1e-12)
            assert r["mean_steps"] == pytest.approx(steps) == r["steps"]  # fixed: every token runs d
        plain = json.loads((run_dir / "eval" / f"{split}.json").read_text())
        assert rows[2]["token_acc"] == pytest.approx(plain["token_acc"], abs=1e-12)
    assert len({r["token_acc"] for r in curve["splits"]["valid"]}) > 1


def test_analysis_carries_the_curve_and_its_figure(run_dir):
    result = analyze_run(run_dir)
    section = result["depth_curve"]
    assert section["trained_max_steps"] == 3
    assert [r["steps"] for r in section["splits"]["valid"]] == [1, 2, 3, 4, 5, 6]
    assert (run_dir / result["figures"]["depth_curve"]).stat().st_size > 1000


@pytest.mark.parametrize("depths", ["0:3", "3:1", "a", "1,x"])
def test_bad_depths_exit_2(run_dir, depths, capsys):
    assert main(["eval", str(run_dir), "--n", "2", "--depths", depths]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--depths" in err[0]


def test_a_policy_bound_to_its_depth_is_refused(tmp_path, capsys):
    out = tmp_path / "dat"
    train(load_config(None, [*TINY, "policy.name=dat", "run.steps=2"]), out, progress="none")
    assert main(["eval", str(out), "--n", "2", "--split", "valid", "--depths", "2:4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "bound to max_steps" in err[-1]
