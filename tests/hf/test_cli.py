"""``ponder hf-train`` lowers the recipe's loss on a task's LM view and saves a model that
``ponder hf-bench`` runs (self-speculation identical to plain greedy ``generate``); bad
input is one stderr line and exit status 2."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from ponder.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "copy"
    rc = main(["hf-train", "--task", "copy", "--knob", "n_max=6", "--steps", "40", "--layers", "3",
               "--d-model", "32", "--batch-size", "16", "--valid-batches", "1", "--log-every", "40",
               "--out", str(out)])
    assert rc == 0
    return out


def test_hf_train_lowers_the_loss_and_saves_the_model(trained, capsys):
    summary = json.loads((trained / "ponder_task.json").read_text())
    assert summary["mean_loss_last10"] < 0.9 * summary["mean_loss_first10"]
    assert summary["dropout_rates"] == [0.0, 0.1, 0.2]
    assert len(summary["agreement_after"]) == 3 and summary["agreement_after"][-1] == 1.0
    assert (trained / "config.json").is_file()


def test_hf_bench_runs_the_three_methods(trained, capsys):
    rc = main(["hf-bench", str(trained), "--n", "2", "--max-new", "8", "--exit-layer", "2",
               "--repeats", "1", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)["hf"][0]
    methods = {r["method"]: r for r in doc["methods"]}
    assert set(methods) == {"plain", "calm", "self_spec"}
    assert methods["self_spec"]["identical_to_greedy"]
    assert 0.0 <= methods["self_spec"]["spec_draft_acceptance_rate"] <= 1.0
    assert 1.0 <= methods["calm"]["mean_layers"] <= 3.0
    assert len(doc["agreement"]) == 3


@pytest.mark.parametrize("argv,needle", [
    (["hf-train", "--task", "nosuch", "--out", "X"], "nosuch"),
    (["hf-train", "--out", "X"], "needs --task"),
    (["hf-train", "--task", "copy", "--knob", "oops", "--out", "X"], "NAME=VALUE"),
    (["hf-train", "--task", "copy", "--layer-dropout", "1.5", "--out", "X"], "layer dropout"),
    (["hf-bench", "/nonexistent/dir"], "not a Hugging Face model directory"),
    (["hf-bench"], "needs MODEL_DIR or --smollm2"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_bench_refuses_bad_knobs_on_a_saved_model(trained, capsys):
    assert main(["hf-bench", str(trained), "--exit-layer", "9"]) == 2
    assert "--exit-layer 9 must lie in 1..3" in capsys.readouterr().err
    assert main(["hf-bench", str(trained), "--exit", "bogus"]) == 2
    assert "exit 'bogus'" in capsys.readouterr().err


def test_bench_refuses_gpt2(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20)).save_pretrained(tmp_path)
    (tmp_path / "ponder_task.json").write_text("{}")  # no tokenizer needed: refused first
    assert main(["hf-bench", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GPT2LMHeadModel" in err[0]
