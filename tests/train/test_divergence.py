"""A NaN/inf loss stops training with a clear message and keeps the last good checkpoint."""

from __future__ import annotations

import pytest
import torch

import ponder.train.trainer as trainer_mod
from ponder.cli import main
from ponder.train.checkpoint import load_checkpoint

TINY = ["task.name=list_rank", "task.knobs.m_min=2", "task.knobs.m_max=4", "task.knobs.ood_m_min=5",
        "task.knobs.ood_m_max=6", "task.knobs.n_labels=8", "model.positions=none",
        "model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.max_steps=3",
        "policy.name=anira_o", "run.batch_size=8", "run.valid_batches=1", "schedule.warmup=2",
        "run.steps=10", "run.ckpt_every=2", "run.eval_every=2"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bad_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys, bad):
    real_build = trainer_mod.build_model
    calls = {"n": 0}
    snapshot = {}

    def poisoned_build(cfg, vocab_size):
        model = real_build(cfg, vocab_size)
        real_loss = model.loss

        def loss(out, targets):
            value, stats = real_loss(out, targets)
            if model.training:
                calls["n"] += 1
                if calls["n"] == 4:  # after the step-4 checkpoint, the weights to keep
                    snapshot.update({k: v.clone() for k, v in model.state_dict().items()})
                if calls["n"] == 5:
                    value = value * bad
            return value, stats

        model.loss = loss
        return model

    monkeypatch.setattr(trainer_mod, "build_model", poisoned_build)
    out = tmp_path / "run"
    code = main(["train", *TINY, "--out", str(out), "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 3
    assert len(err.strip().splitlines()) == 1
    assert ("nan" in err or "inf" in err) and "step 5" in err and "checkpoint" in err
    ckpt = load_checkpoint(out)
    assert ckpt.step == 4 and ckpt.state["finished"] is None
    # step 4's forward ran on the weights after step 3; the kept checkpoint holds the
    # weights after step 4 — finite, and different from those (a real update happened)
    assert all(torch.isfinite(v).all() for v in ckpt.weights.values())
    assert any(not torch.equal(ckpt.weights[k], snapshot[k]) for k in snapshot
               if snapshot[k].is_floating_point())
