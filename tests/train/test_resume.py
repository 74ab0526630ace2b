"""Exact resume: a run SIGKILLed after its first checkpoint and resumed ends bit-identical
to an uninterrupted run; a different config for an existing run is refused."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ponder.cli import main
from ponder.train.checkpoint import CKPT_DIR, MANIFEST, load_checkpoint
from ponder.train.config import load_config
from ponder.train.trainer import train

TINY = ["task.name=list_rank", "task.knobs.m_min=2", "task.knobs.m_max=4", "task.knobs.ood_m_min=5",
        "task.knobs.ood_m_max=6", "task.knobs.n_labels=8", "model.positions=none",
        "model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.max_steps=3",
        "policy.name=anira_o", "run.batch_size=8", "run.valid_batches=2", "schedule.warmup=5",
        "optim.lr=3e-3", "run.threads=1", "run.seed=3"]
STEPS = 120
RESUME = [*TINY, f"run.steps={STEPS}", "run.eval_every=10", "run.ckpt_every=10"]


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def final_valid(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "valid"][-1]


def test_sigkill_mid_run_then_resume_is_exact(tmp_path):
    reference = tmp_path / "reference"
    result = train(load_config(None, RESUME), reference, progress="none")
    assert result.step == STEPS

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ponder", "train", *RESUME, "--out", str(killed), "--progress", "none"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = killed / CKPT_DIR / MANIFEST
    deadline = time.monotonic() + 120
    while not manifest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    killed_at = load_checkpoint(killed).step
    assert 0 < killed_at < STEPS  # really interrupted mid-way

    code = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    assert load_checkpoint(killed).step == STEPS

    a, b = load_checkpoint(reference), load_checkpoint(killed)
    assert a.weights.keys() == b.weights.keys()
    for k in a.weights:
        assert torch.equal(a.weights[k], b.weights[k]), k
    va, vb = final_valid(reference), final_valid(killed)
    for key in ("loss", "token_acc", "seq_acc", "mean_steps"):
        assert va[key] == pytest.approx(vb[key], abs=1e-6)
    # the resumed metrics file reads like one run: every step logged once
    steps = [json.loads(l)["step"] for l in (killed / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["split"] == "valid"]
    assert steps == list(range(10, STEPS + 1, 10))


def test_second_call_resumes_and_finished_run_is_a_no_op(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "run.steps=6", "run.ckpt_every=3", "run.eval_every=3", "--out", str(out),
            "--progress", "none"]
    assert main(args) == 0
    before = tree_digest(out)
    assert main(args) == 0
    assert "already finished" in capsys.readouterr().out
    assert tree_digest(out) == before
    # no config and no overrides: resume with the run's own config
    assert main(["train", "--out", str(out), "--progress", "none"]) == 0


def test_different_config_for_existing_run_is_refused_intact(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "run.steps=4", "run.ckpt_every=2", "--out", str(out),
                 "--progress", "none"]) == 0
    before = tree_digest(out)
    capsys.readouterr()
    assert main(["train", *TINY, "run.steps=5", "run.ckpt_every=2", "--out", str(out),
                 "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "different config" in err and "run.steps" in err
    assert tree_digest(out) == before


def test_corrupt_checkpoint_is_refused_intact(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "run.steps=6", "run.ckpt_every=2", "--out", str(out), "--progress", "none"]
    assert main(args) == 0
    weights = next((out / CKPT_DIR).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    before = tree_digest(out)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "truncated" in err
    assert tree_digest(out) == before


def test_non_run_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", *TINY, "run.steps=2", "--out", str(out), "--progress", "none"]) == 2
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
