"""benchmarks/all_token_flops.py: its scored-token mean equals ``ponder eval``'s records, and
its all-token mean equals a loop over single unpadded examples (padding excluded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from ponder.eval.evaluate import load_run
from ponder.tasks import collate
from ponder.train.segments import forward_segments
from tests.runs import trained_run

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "all_token_flops.py"
# listops scores only the ] tokens; a router makes the FLOPs differ between tokens
TINY = ["task.name=listops", "task.preset=small", "model.positions=rotary", "model.d_model=16",
        "model.n_heads=2", "model.d_ff=32", "model.max_steps=3", "model.router.kind=mod",
        "model.router.knobs.capacity=0.4", "run.batch_size=8", "run.valid_batches=1",
        "run.steps=4", "run.ckpt_every=4", "run.eval_every=4", "schedule.warmup=1"]
N = 12


def script():
    spec = importlib.util.spec_from_file_location("all_token_flops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory, "flops", TINY, ["--n", str(N), "--split", "valid"])


def test_scored_mean_matches_the_eval_records(run_dir):
    every, scored = script().mean_flops(run_dir, "valid", N, batch_size=5)
    records = pq.read_table(run_dir / "eval" / "valid.parquet").to_pandas()
    assert scored == pytest.approx(records["flops"].mean(), rel=1e-9)
    assert every != pytest.approx(scored, rel=1e-3)  # listops: the unscored tokens differ


def test_all_token_mean_matches_single_examples(run_dir):
    every, _ = script().mean_flops(run_dir, "valid", N, batch_size=5)
    run = load_run(run_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(N):
            batch = collate([run.task.example("valid", i)], run.vocab)   # one example, no pad
            out = forward_segments(run.model, batch.tokens, batch.mask, segments=1)
            total += float(out.flops.double().sum())
            count += batch.tokens.shape[1]
    assert every == pytest.approx(total / count, rel=1e-9)
