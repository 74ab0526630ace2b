"""``ponder eval RUN --policy NAME[:knobs]``: a checkpoint evaluated under another halting rule.

References: the training-free exits at their extreme thresholds are hand-known (threshold 0
never fires → the trained depth; a threshold no KL can reach → every token exits after step
1), and ``fixed:steps=k`` must equal the plain depth-k forward; these are checked against
direct forwards of the trained model. Plus: the results land in a directory ``ponder
analyze`` reads, the run's own eval is untouched, a policy with trained state is refused
(unless it is the run's own, then its weights are kept) and bad input exits 2 with one line.
"""

from __future__ import annotations

import json

import pytest
import torch

from ponder.analysis.analyze import analyze_run
from ponder.cli import main
from ponder.eval.evaluate import load_run, parse_policy
from ponder.train.config import PolicyConfig, load_config
from ponder.train.rundir import read_run_config
from ponder.train.trainer import train
from tests.tiny_list_rank import direct_forward, tiny_config
from tests.runs import trained_run

TINY = tiny_config(10)
N = 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory, "policy", TINY, ["--n", str(N)])


def summary(path, split):
    return json.loads((path / "eval" / f"{split}.json").read_text())


@pytest.mark.parametrize("spec, depth, steps", [
    ("kl_exit:threshold=0", 3, 3.0),        # KL < 0 never holds: every token runs N = 3
    ("kl_exit:threshold=1000", 1, 1.0),     # KL(p ‖ q) < 1000 always: every token exits at 1
    ("latent_exit:threshold=1000", 1, 1.0),
    ("fixed:steps=2", 2, 2.0),
])
def test_extreme_rules_equal_the_forward_at_that_depth(run_dir, tmp_path, spec, depth, steps):
    out = tmp_path / "p"
    assert main(["eval", str(run_dir), "--n", str(N), "--policy", spec, "--out", str(out)]) == 0
    for split in ("valid", "ood"):
        s = summary(out, split)
        assert s["mean_steps"] == pytest.approx(steps)
        assert s["token_acc"] == pytest.approx(direct_forward(run_dir, split, depth, N)[0], abs=1e-12)
    cfg = read_run_config(out)
    assert cfg.policy == parse_policy(spec)
    source = json.loads((out / "source.json").read_text())
    assert source["run"] == str(run_dir.resolve()) and source["checkpoint_step"] == 10


def test_default_directory_analysis_and_depth_curve(run_dir):
    before = (run_dir / "eval" / "valid.json").read_text()
    assert main(["eval", str(run_dir), "--n", str(N), "--policy", "kl_exit:threshold=0.05",
                 "--depths", "1:4"]) == 0
    out = run_dir / "policies" / "kl_exit-threshold=0.05"
    assert (run_dir / "eval" / "valid.json").read_text() == before  # the run's own eval untouched
    curve = json.loads((out / "eval" / "depth_curve.json").read_text())
    assert [r["steps"] for r in curve["splits"]["valid"]] == [1, 2, 3, 4]
    assert all(r["mean_steps"] <= r["steps"] for r in curve["splits"]["valid"])
    result = analyze_run(out)
    assert result["run"]["info"]["policy"] == "kl_exit"
    assert result["run"]["summaries"]["valid"]["mean_steps"] == summary(out, "valid")["mean_steps"]


def test_trained_state_is_refused_unless_it_is_the_runs_own(run_dir, tmp_path, capsys):
    assert main(["eval", str(run_dir), "--n", "2", "--policy", "q_halt", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "q_halt" in err[0] and "training-free" in err[0]
    assert not (tmp_path / "q").exists()
    # the run's own policy with other knobs keeps its trained head
    q_run = tmp_path / "qrun"
    train(load_config(None, [*TINY, "policy.name=q_halt", "run.steps=4", "run.ckpt_every=4"]), q_run,
          progress="none")
    spec = PolicyConfig(name="q_halt", knobs={"eval_halting": False})
    loaded, plain = load_run(q_run, policy=spec), load_run(q_run)
    for (name, a), b in zip(loaded.model.state_dict().items(), plain.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert main(["eval", str(q_run), "--n", "4", "--split", "valid", "--policy", "q_halt:eval_halting=false"]) == 0
    assert summary(q_run / "policies" / "q_halt-eval_halting=False", "valid")["mean_steps"] == 3.0


@pytest.mark.parametrize("args, needle", [
    (["--policy", "nope"], "unknown policy"),
    (["--policy", "kl_exit:thr=1"], "unknown knob"),
    (["--policy", "kl_exit:threshold"], "--policy"),
    (["--policy", "kl_exit:threshold=x"], "threshold"),
    (["--policy", "kl_exit:threshold=-1"], "range"),
    (["--out", "/tmp/nowhere"], "--out"),
    (["--policy", "kl_exit", "--sweep", "m=2..3"], "--sweep"),
])
def test_bad_input_exits_2_with_one_line(run_dir, args, needle, capsys):
    assert main(["eval", str(run_dir), "--n", "2", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_results_never_overwrite_a_trained_run(run_dir, capsys):
    assert main(["eval", str(run_dir), "--n", "2", "--policy", "kl_exit", "--out", str(run_dir)]) == 2
    other = run_dir.parent / "other"
    train(load_config(None, [*TINY, "run.steps=1", "run.ckpt_every=1"]), other, progress="none")
    assert main(["eval", str(run_dir), "--n", "2", "--policy", "kl_exit", "--out", str(other)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
