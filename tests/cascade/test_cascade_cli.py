"""``ponder cascade`` end to end on tiny trained runs: measured costs and bad input → exit 2."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from ponder.cascade.outcomes import measure_run
from ponder.cli import main
from ponder.eval.evaluate import load_run
from ponder.tasks import IGNORE_INDEX, collate
from ponder.train.config import load_config
from ponder.train.trainer import train

KNOBS = dict(m_min=2, m_max=4, ood_m_min=5, ood_m_max=6, n_labels=8)
TINY = ["task.name=list_rank", *[f"task.knobs.{k}={v}" for k, v in KNOBS.items()],
        "model.positions=none", "model.d_model=16", "model.n_heads=2", "model.d_ff=32",
        "run.batch_size=8", "run.valid_batches=1", "run.steps=4", "run.ckpt_every=4",
        "run.eval_every=4", "schedule.warmup=2"]
N = 40


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    out = {}
    for name, extra in (("small", ["model.max_steps=1", "policy.name=fixed"]),
                        ("adaptive", ["model.max_steps=3", "policy.name=anira_o"]),
                        ("other_task", ["model.max_steps=1", "policy.name=fixed",
                                        "task.knobs.n_labels=9"])):
        train(load_config(None, TINY + extra), root / name, progress="none")
        out[name] = root / name
    return out


def test_measured_outcomes_match_a_direct_loop(runs):
    got = measure_run(runs["adaptive"], split="valid", n=N, batch_size=7)
    run = load_run(runs["adaptive"])
    m = run.cfg.model
    d, dff, vocab = m.d_model, m.d_ff, len(run.vocab)
    for i in range(N):
        ex = run.task.example("valid", i)
        batch = collate([ex], run.vocab)
        with torch.no_grad():
            o = run.model(batch.tokens, batch.mask)
        scored = (batch.targets != IGNORE_INDEX)[0]
        probs = torch.softmax(o.logits[0].double(), -1)[scored]
        assert got.correct[i] == bool((o.logits[0].argmax(-1)[scored] == batch.targets[0][scored]).all())
        assert got.confidence["max_softmax"][i] == pytest.approx(float(probs.max(-1).values.min()), abs=1e-6)
        length = max(ex.scored()) + 1
        block = 8 * d * d + 4 * d * dff + 4 * length * d
        want = sum((m.prelude + m.coda) * block + 2 * d * vocab + int(o.steps[0, p]) * m.core * block
                   for p in ex.scored())
        assert got.flops[i] == pytest.approx(want, rel=1e-9)
        assert got.complexity[i] == max(ex.complexity[p] for p in ex.scored())
    assert (got.wall_s > 0).all()


@pytest.mark.parametrize("rule", ["idk", "frugal", "router"])
def test_cascade_writes_records_and_summary(runs, tmp_path, rule):
    out = tmp_path / rule
    assert main(["cascade", str(runs["small"]), str(runs["adaptive"]), "--rule", rule,
                 "--n", str(N), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    rec = pq.read_table(out / "records.parquet").to_pandas()
    assert len(rec) == s["parts"]["test"]
    assert s["test"]["accuracy"] == pytest.approx(rec["correct"].mean())
    assert s["test"]["flops"] == pytest.approx(rec["flops"].mean())
    assert set(rec["answered_by"]) <= {"small", "adaptive"}
    assert sum(s["test"]["answered_by"].values()) == pytest.approx(1.0)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_one_line_exit_2_nothing_written(runs, tmp_path, capsys):
    out = tmp_path / "out"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((runs["small"] / "config.yaml").read_text())
    cases = [
        [str(runs["small"])],                                   # one run
        [str(runs["small"]), str(runs["other_task"])],          # different tasks
        [str(runs["small"]), str(tmp_path / "nope")],           # no such run
        [str(runs["small"]), str(broken)],                      # no checkpoint
        [str(runs["small"]), str(runs["adaptive"]), "--budget", "-1"],
        [str(runs["small"]), str(runs["adaptive"]), "--target-risk", "1.5"],
    ]
    for args in cases:
        capsys.readouterr()
        assert main(["cascade", *args, "--rule", "idk", "--n", str(N), "--out", str(out)]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, (args, err)
        assert not out.exists(), args
