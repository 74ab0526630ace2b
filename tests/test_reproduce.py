"""`ponder reproduce`: the shipped parity configs, bad input, and one tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import ponder.models
import ponder.tasks
from ponder.cli import main
from ponder.apps.reproduce import EXPERIMENTS, NOTES_MARK, TABLE_COLUMNS, learning_curve, write_doc
from ponder.tasks.vocab import Vocab
from ponder.train.config import load_config, validate_names

REPO = Path(__file__).resolve().parents[1]
PARITY = [name for name, _ in EXPERIMENTS["parity"]]


def test_every_parity_run_has_exactly_one_shipped_config():
    shipped = sorted(p.stem.removeprefix("parity_") for p in (REPO / "configs").glob("parity_*.yaml"))
    assert shipped == sorted(PARITY)


@pytest.mark.parametrize("name", PARITY)
def test_shipped_parity_config_loads_validates_and_builds(name):
    path = REPO / "configs" / f"parity_{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    cfg = load_config(path)            # unknown keys or wrong types raise ConfigError
    validate_names(cfg)
    assert cfg.task.name == "parity" and cfg.run.stop_at_acc == 0.995
    assert cfg.run.threads == 1 and cfg.run.time_budget_s <= 20 * 60
    # every key of the file made it into the typed config (nothing silently dropped)
    for section, values in raw.items():
        for key in values:
            assert hasattr(getattr(cfg, section), key), f"{section}.{key}"
    task = ponder.tasks.get(cfg.task.name, cfg.task.preset, **dict(cfg.task.knobs))
    model = ponder.models.build(cfg.model, cfg.policy.name, vocab_size=len(Vocab.for_task(task)))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_parity_configs_share_width_and_optimiser():
    cfgs = {n: load_config(REPO / "configs" / f"parity_{n}.yaml") for n in PARITY}
    shared = {(c.model.d_model, c.model.n_heads, c.model.d_ff, c.model.positions, c.optim.lr,
               c.run.batch_size, c.task.preset, tuple(sorted(c.task.knobs.items()))) for c in cfgs.values()}
    assert len(shared) == 1
    assert cfgs["transformer"].policy.name == "fixed" and cfgs["ut"].policy.name == "ut_act"
    assert cfgs["pondernet"].policy.name == "pondernet" and cfgs["anira_o"].policy.name == "anira_o"
    assert cfgs["adatape"].model.kind == "adatape" and cfgs["adatape"].model.adatape.bank == "input"


def test_adatape_section_is_typed():
    from ponder.errors import ConfigError

    cfg = load_config(REPO / "configs" / "parity_adatape.yaml", ["model.adatape.ngram=2"])
    assert dict(cfg.model.adatape)["ngram"] == 2
    with pytest.raises(ConfigError):
        load_config(None, ["model.adatape.no_such_knob=1"])
    with pytest.raises(ConfigError):
        load_config(None, ["model.adatape.max_tape=many"])


@pytest.mark.parametrize("argv, words", [
    (["reproduce", "no_such_experiment"], "unknown experiment"),
    (["reproduce", "parity", "--only", "transformer", "no_such_model"], "no_such_model"),
    (["reproduce", "parity", "--budget", "0"], "--budget"),
    (["reproduce", "parity", "--budget", "soon"], "--budget"),
    (["reproduce", "parity", "--budget", "nan"], "--budget"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "runs"), "--doc", str(tmp_path / "r.md")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.md").exists()


def test_learning_curve_spreads_points_and_keeps_the_last(tmp_path):
    lines = [json.dumps({"step": s, "split": "train", "loss": 1.0}) for s in range(0, 500, 10)]
    lines += [json.dumps({"step": s, "split": "valid", "token_acc": s / 1000}) for s in range(100, 2100, 100)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    curve = learning_curve(tmp_path, points=5)
    assert curve[0] == (100, 0.1) and curve[-1] == (2000, 2.0) and len(curve) == 5
    assert [s for s, _ in curve] == sorted(s for s, _ in curve)


def test_rewriting_the_results_keeps_the_notes(tmp_path):
    doc = tmp_path / "r.md"
    write_doc(doc, "# first\n")
    doc.write_text(doc.read_text() + f"{NOTES_MARK}\nwhat was tried\n")
    write_doc(doc, "# second\n")
    text = doc.read_text()
    assert text.startswith("# second") and "# first" not in text and text.endswith("what was tried\n")


TINY = """
task: {name: parity, preset: null, knobs: {n_min: 4, n_max: 4, k_min: 1, k_max: 4, ood_n_min: 6,
       ood_n_max: 6, ood_k_min: 5, ood_k_max: 6}}
model: {kind: KIND, d_model: 16, n_heads: 2, d_ff: 32, prelude: 0, coda: 0, max_steps: 2,
        positions: none, adatape: {n_layers: 1, max_tape: 2}}
policy: {name: POLICY}
run: {batch_size: 8, steps: 4, eval_every: 2, ckpt_every: 4, log_every: 2, valid_batches: 1}
"""


def test_tiny_reproduction_end_to_end(tmp_path, capsys):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "parity_transformer.yaml").write_text(TINY.replace("KIND", "stacked").replace("POLICY", "fixed"))
    (configs / "parity_adatape.yaml").write_text(TINY.replace("KIND", "adatape").replace("POLICY", "fixed"))
    out, doc = tmp_path / "runs", tmp_path / "results" / "parity.md"
    rc = main(["reproduce", "parity", "--only", "transformer", "adatape", "--configs", str(configs),
               "--out", str(out), "--doc", str(doc), "--budget", "60", "--n", "16", "--jobs", "1"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "[adatape] train:" in printed and "[transformer] eval:" in printed  # progress lines
    assert "[adatape] adatape: step 4" in printed
    text = doc.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(TABLE_COLUMNS)
    rows = [line for line in text.splitlines() if line.startswith("| **transformer**") or line.startswith("| **adatape**")]
    assert len(rows) == 2 and all(len(r.strip("|").split("|")) == len(TABLE_COLUMNS) for r in rows)
    assert "ponder reproduce parity" in text and "--budget 60" in text
    assert "nproc" in text and "torch" in text and "Load average" in text
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results] == ["adatape", "transformer"]  # EXPERIMENTS order
    for r in results:
        assert r["steps"] == 4 and r["stop_reason"] == "steps" and 0 <= r["valid_acc"] <= 1
        assert r["n_valid"] == 16 and r["n_ood"] == 16 and r["curve"][-1][0] == 4
        assert (Path(r["run_dir"]) / "analysis.json").exists()
    assert results[0]["compute_unit"] == "tape tokens" and results[0]["max_compute"] == 2
    assert results[1]["compute_unit"] == "steps" and results[1]["max_compute"] == 2
    assert (out / "report.html").stat().st_size > 0


def test_parallel_jobs_run_in_child_processes_and_report_failures(monkeypatch, capsys, tmp_path):
    """--jobs > 1: each run's stages are child processes; output is prefixed, a failing stage
    stops that run only (cheap stand-in commands instead of training)."""
    import sys

    import ponder.apps.reproduce as rep

    def fake_commands(job, n):
        code = "import sys; print('hello from', sys.argv[1]); sys.exit(3 if sys.argv[1] == 'bad' else 0)"
        return [(stage, [sys.executable, "-c", code, job.name]) for stage in ("train", "eval")]

    monkeypatch.setattr(rep, "_commands", fake_commands)
    jobs = [rep.Job(name, "", tmp_path / f"{name}.yaml", tmp_path / name, []) for name in ("good", "bad", "also")]
    rep.run_all(jobs, n=1, parallel=2, threads=1)
    printed = capsys.readouterr().out
    good, bad, also = jobs
    assert good.failed_at is None and also.failed_at is None and bad.failed_at == "train"
    assert printed.count("[good] hello from good") == 2 and printed.count("[bad] hello from bad") == 1
    assert "[bad] train FAILED (exit 3)" in printed and "[bad] eval:" not in printed


def test_a_subset_run_does_not_replace_the_full_results_table(tmp_path):
    import argparse

    from ponder.apps.reproduce import doc_path

    def args(only=None, doc=None):
        return argparse.Namespace(experiment="parity", only=only, doc=doc)

    out = tmp_path / "runs"
    assert doc_path(args(), out) == Path("docs/results/parity.md")
    assert doc_path(args(only=list(reversed(PARITY))), out) == Path("docs/results/parity.md")
    assert doc_path(args(only=["adatape"]), out) == out / "parity.md"
    assert doc_path(args(only=["adatape"], doc="x.md"), out) == Path("x.md")
