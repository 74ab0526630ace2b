"""``ponder eval``: per-token records (schema of records.py), summaries, bad input → exit 2."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest
import torch

import ponder.tasks
from ponder.cli import main
from ponder.eval.records import FIXED_COLUMNS, RECORDS_VERSION
from tests.runs import trained_run

KNOBS = dict(m_min=2, m_max=4, ood_m_min=5, ood_m_max=6, n_labels=8)
TINY = ["task.name=list_rank", *[f"task.knobs.{k}={v}" for k, v in KNOBS.items()],
        "model.positions=none", "model.d_model=16", "model.n_heads=2", "model.d_ff=32",
        "model.max_steps=3", "policy.name=anira_o", "run.batch_size=8", "run.valid_batches=1",
        "run.steps=6", "run.ckpt_every=3", "run.eval_every=3", "schedule.warmup=2"]
N = 24


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory, "eval", TINY, ["--n", str(N), "--batch-size", "10"])


def test_records_schema_and_metadata(run_dir):
    for split in ("valid", "ood"):
        table = pq.read_table(run_dir / "eval" / f"{split}.parquet")
        names = table.schema.names
        assert names[: len(FIXED_COLUMNS)] == list(FIXED_COLUMNS)
        assert {"param_m", "feat_position", "feat_m"} <= set(names)
        types = {f.name: str(f.type) for f in table.schema}
        assert types["example"] == "int64" and types["correct"] == "bool"
        assert types["steps"] == "int64" and types["seen_label"] == "bool"
        assert types["feat_position"] == "double"
        meta = table.schema.metadata
        assert int(meta[b"ponder_records_version"]) == RECORDS_VERSION
        run = json.loads(meta[b"ponder_run"])
        for key in ("policy", "task", "model_kind", "max_steps", "d_model", "n_heads", "d_ff",
                    "prelude", "coda", "core"):
            assert key in run
        assert run["policy"] == "anira_o" and run["task"] == "list_rank" and run["max_steps"] == 3


def test_records_match_the_task_examples(run_dir):
    task = ponder.tasks.get("list_rank", **KNOBS)
    for split in ("valid", "ood"):
        df = pq.read_table(run_dir / "eval" / f"{split}.parquet").to_pandas()
        expected = [(i, p, ex.target[p], ex.complexity[p], ex.input[p])
                    for i in range(N) for ex in [task.example(split, i)] for p in ex.scored()]
        got = list(zip(df.example, df.position, df.target, df.complexity, df.token))
        assert got == expected
        assert (df.correct == (df.prediction == df.target)).all()
        assert ((df.steps >= 1) & (df.steps <= 3)).all() and (df.max_steps == 3).all()
        # seen_label: list_rank's train labels are the distances 0..m_max-1
        assert (df.seen_label == df.target.astype(int).lt(KNOBS["m_max"])).all()
        assert (df.feat_position == df.position).all()
        seq = df.groupby("example").correct.all()
        assert (df.seq_correct == df.example.map(seq)).all()
    ood = pq.read_table(run_dir / "eval" / "ood.parquet").to_pandas()
    assert (~ood.seen_label).any() and ood.seen_label.any()


def test_summary_agrees_with_records(run_dir):
    for split in ("valid", "ood"):
        df = pq.read_table(run_dir / "eval" / f"{split}.parquet").to_pandas()
        s = json.loads((run_dir / "eval" / f"{split}.json").read_text())
        assert s["n_tokens"] == len(df) and s["n_examples"] == N
        assert s["token_acc"] == pytest.approx(df.correct.mean())
        assert s["seq_acc"] == pytest.approx(df.groupby("example").correct.all().mean())
        assert s["mean_steps"] == pytest.approx(df.steps.mean())
        assert s["token_steps"] == df.steps.sum() and s["fixed_token_steps"] == len(df) * 3
        seen = df[df.seen_label]
        assert s["n_seen"] == len(seen)
        assert s["acc_seen"] == pytest.approx(seen.correct.mean())
        unseen = df[~df.seen_label]
        assert s["acc_unseen"] == (pytest.approx(unseen.correct.mean()) if len(unseen) else None)


def test_predictions_come_from_the_checkpoint(run_dir):
    from ponder.eval.evaluate import load_run
    from ponder.tasks import collate

    run = load_run(run_dir)
    examples = [run.task.example("valid", i) for i in range(N)]
    batch = collate(examples, run.vocab)
    with torch.no_grad():
        out = run.model(batch.tokens, batch.mask)
    pred = out.logits.argmax(-1)
    df = pq.read_table(run_dir / "eval" / "valid.parquet").to_pandas()
    for row in df.itertuples():
        assert run.vocab.itos[int(pred[row.example, row.position])] == row.prediction
        assert int(out.steps[row.example, row.position]) == row.steps


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_bad_input_exit_2_leaves_run_intact(run_dir, tmp_path, capsys):
    before = _digest(run_dir)
    cases = [
        ["eval", str(tmp_path / "nope")],
        ["eval", str(run_dir), "--split", "bogus"],
        ["eval", str(run_dir), "--n", "0"],
    ]
    for args in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _digest(run_dir) == before
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    assert main(["eval", str(empty)]) == 2  # a run without a checkpoint
    assert "no checkpoint" in capsys.readouterr().err
