"""``ponder generate``: the answers of an LM-view run with per-token compute and correctness,
the same as the library's greedy generation; bad input → one line, exit 2."""

from __future__ import annotations

import json

import pytest

from ponder.cli import main
from ponder.eval.evaluate import load_run
from ponder.generate import generate
from ponder.tasks.lm import EOS
from ponder.train.config import load_config
from ponder.train.trainer import train
from tests.runs import trained_run

TINY = ["task.name=flipflop", "task.lm=true", "model.causal=true", "model.d_model=16",
        "model.n_heads=2", "model.d_ff=32", "model.max_steps=2", "policy.name=fixed",
        "run.batch_size=8", "run.valid_batches=1", "run.steps=4", "run.ckpt_every=4",
        "run.eval_every=4", "schedule.warmup=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory, "gen", TINY)


def test_generate_writes_answers_compute_and_correctness(run_dir):
    assert main(["generate", str(run_dir), "--split", "valid", "--n", "5", "--batch-size", "2",
                 "--max-new", "12"]) == 0
    rows = [json.loads(line) for line in (run_dir / "generate" / "valid.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "generate" / "valid.summary.json").read_text())
    assert [r["index"] for r in rows] == list(range(5)) and summary["n"] == 5
    run = load_run(run_dir)
    eos = run.vocab.stoi[EOS]
    for r in rows:
        prompt, answer, costs = run.task.prompt("valid", r["index"])
        assert r["prompt"] == prompt and r["answer"] == answer
        ref = generate(run.model, [run.vocab.encode(prompt)], max_new=12, eos=eos)
        assert r["generated"] == run.vocab.decode(ref.tokens[0])
        assert r["steps"] == [2] * len(r["generated"]) and len(r["flops"]) == len(r["generated"])
        assert r["correct"] == [k < len(answer) and g == answer[k] for k, g in enumerate(r["generated"])]
        assert r["exact"] == (r["generated"] == answer)
    total = sum(len(r["answer"]) for r in rows)
    assert summary["token_accuracy"] == pytest.approx(sum(sum(r["correct"]) for r in rows) / total)
    assert summary["mean_steps"] == 2.0


def test_generate_with_exits(run_dir):
    assert main(["generate", str(run_dir), "--n", "3", "--exit", "softmax:0.0",
                 "--temperature", "1.0", "--top-p", "0.9", "--seed", "3"]) == 0
    rows = [json.loads(line) for line in (run_dir / "generate" / "valid.jsonl").read_text().splitlines()]
    # margin >= 0 = λ: every generated token exits after step 1 (the first comes from the prompt)
    assert all(s == 1 for r in rows for s in r["steps"][1:])
    def rows_of(*args):
        assert main(["generate", str(run_dir), "--n", "2", *args]) == 0
        text = (run_dir / "generate" / "valid.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines()]

    full = rows_of()
    oracle = rows_of("--exit", "softmax:0.0", "--fill", "recompute")
    summary = json.loads((run_dir / "generate" / "valid.summary.json").read_text())
    assert summary["fill"] == "recompute" and all(s == 1 for r in oracle for s in r["steps"][1:])
    # the oracle computes every step for the cache: the full-depth FLOPs at every position
    for a, b in zip(full, oracle):
        n = min(len(a["flops"]), len(b["flops"]))
        assert a["flops"][:n] == b["flops"][:n]
    propagated = rows_of("--exit", "softmax:0.0")
    assert all(f < g for a, b in zip(full, propagated) for f, g in zip(b["flops"][1:], a["flops"][1:]))


@pytest.mark.parametrize("args", [
    ["--split", "nope"], ["--n", "0"], ["--exit", "softmax"], ["--exit", "policy"],
    ["--fill", "magic"], ["--top-p", "2"], ["--temperature", "-1"],
])
def test_bad_input_is_one_line_exit_2(run_dir, args, capsys):
    assert main(["generate", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ponder: error:")


def test_not_an_lm_run(tmp_path, capsys):
    out = tmp_path / "plain"
    train(load_config(None, [t for t in TINY if t != "task.lm=true"]), out, progress="none")
    assert main(["generate", str(out)]) == 2
    assert "task.lm=true" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "missing")]) == 2
