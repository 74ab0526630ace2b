"""``ponder bench --part decode``: every method's record (speed-up against plain at the same
batch, identical greedy output, vLLM acceptance metrics); bad input → one line, exit 2."""

from __future__ import annotations

import json

import pytest

from ponder.cli import main
from ponder.train.config import load_config
from ponder.train.trainer import train

BASE = ["task.name=flipflop", "task.lm=true", "model.causal=true", "model.kind=stacked",
        "model.n_heads=2", "model.prelude=0", "model.coda=0", "run.batch_size=8",
        "run.valid_batches=1", "run.steps=3", "run.ckpt_every=3", "run.eval_every=3",
        "schedule.warmup=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    target, draft = root / "target", root / "draft"
    train(load_config(None, BASE + ["model.d_model=16", "model.d_ff=32", "model.max_steps=3",
                                    "policy.name=confidence", "model.layer_dropout=0.2"]),
          target, progress="none")
    train(load_config(None, BASE + ["model.d_model=8", "model.d_ff=16", "model.max_steps=1"]),
          draft, progress="none")
    return target, draft


def test_decode_bench_records(runs, capsys):
    target, draft = runs
    assert main(["bench", "--part", "decode", "--run", str(target), "--draft", str(draft),
                 "--n", "3", "--max-new", "6", "--repeats", "1", "--decode-batch", "2",
                 "--k", "2", "--exit-step", "2", "--threads", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (entry,) = doc["decode"]
    methods = {r["method"]: r for r in entry["methods"]}
    assert set(methods) == {"plain", "calm", "self_spec", "spec", "plain_batched", "calm_batched"}
    assert methods["plain"]["speedup"] == 1.0 and methods["plain_batched"]["speedup"] == 1.0
    for name in ("plain", "self_spec", "spec", "plain_batched"):
        assert methods[name]["identical_to_greedy"], name  # exactness of the speculative methods
    for name in ("self_spec", "spec"):
        r = methods[name]
        assert r["spec_k"] == 2 and sum(r["spec_acceptance_histogram"]) == r["spec_num_drafts"]
        assert 0.0 <= r["spec_draft_acceptance_rate"] <= 1.0
        assert r["spec_mean_acceptance_length"] == pytest.approx(
            1 + r["spec_num_accepted_tokens"] / r["spec_num_drafts"])
    assert 1.0 <= methods["calm"]["mean_steps"] <= 3.0
    assert entry["model"]["layer_dropout"] == 0.2 and entry["settings"]["exit_step"] == 2


@pytest.mark.parametrize("extra", [[], ["--run", "MISSING"], ["--run", "TARGET", "--exit-step", "9"],
                                   ["--run", "TARGET", "--exit", "softmax"],
                                   ["--run", "DRAFT_AS_PLAIN"]])
def test_decode_bench_bad_input(runs, tmp_path, extra, capsys):
    target, draft = runs
    if "DRAFT_AS_PLAIN" in extra:
        plain = tmp_path / "plain"
        train(load_config(None, [b for b in BASE if b != "task.lm=true"] + ["model.d_model=8",
              "model.d_ff=16", "model.max_steps=1"]), plain, progress="none")
        extra = ["--run", str(plain)]
    extra = [str(target) if e == "TARGET" else str(tmp_path / "missing") if e == "MISSING" else e
             for e in extra]
    assert main(["bench", "--part", "decode", "--n", "2", "--max-new", "3", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
