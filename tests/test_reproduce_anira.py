"""`ponder reproduce anira`: planning, the executors, the findings on known answers, and one
tiny end-to-end run."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import pytest
import yaml

import ponder.tasks
from ponder.apps import findings as fnd
from ponder.apps.anira import POLICIES, TASKS_FILE, plan, read_tasks
from ponder.apps.executors import PoolExecutor, RayExecutor, SerialExecutor, Work, run_work
from ponder.cli import main
from ponder.train.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _args(**kw):
    base = dict(experiment="anira", seeds=None, steps=None, jobs=2, threads=1, n=100, executor=None,
                address=None, configs=str(CONFIGS), only=None, out="runs-x", set=None, doc=None,
                resume=False, ledger=None, from_ledger=False)
    return argparse.Namespace(**{**base, **kw})


def _non_constant_tasks() -> list[str]:
    """Tasks whose valid examples (default knobs) have more than one complexity value."""
    out = []
    for name in ponder.tasks.names():
        task = ponder.tasks.get(name)
        seen = {c for i in range(32) for c in task.example("valid", i).complexity if c is not None}
        if len(seen) > 1:
            out.append(name)
    return out


# -- planning ------------------------------------------------------------------------------
def test_the_study_covers_exactly_the_tasks_with_non_constant_complexity():
    studied = sorted(read_tasks(CONFIGS))
    assert studied == sorted(_non_constant_tasks())
    assert "copy" not in studied and "reverse" not in studied and len(studied) >= 10


def test_policy_bases_differ_only_in_their_policy_section():
    raws = {p: yaml.safe_load((CONFIGS / f"anira_{p}.yaml").read_text()) for p in POLICIES}
    for p, raw in raws.items():
        assert raw["policy"]["name"] == p
    rest = [{k: v for k, v in raw.items() if k != "policy"} for raw in raws.values()]
    assert all(r == rest[0] for r in rest)
    assert rest[0]["run"].get("time_budget_s") is None


def test_plan_makes_one_job_per_task_policy_seed_with_the_right_config():
    settings = read_tasks(CONFIGS)
    works = plan(_args())
    assert len(works) == len(settings) * len(POLICIES) * 3
    names = [w.name for w in works]
    assert len(set(names)) == len(names) and len({w.run_dir for w in works}) == len(works)
    per_seed = len(settings) * len(POLICIES)       # seed-major: whole seeds first
    assert names[:2] == [f"{sorted(settings)[0]}/fixed/seed0", f"{sorted(settings)[0]}/anira_e/seed0"]
    assert all(n.endswith(f"seed{i // per_seed}") for i, n in enumerate(names))
    for w in works:
        task, policy, seed = w.name.split("/")
        cfg = load_config(w.config, list(w.overrides))
        s = settings[task]
        assert Path(w.config).name == f"anira_{policy}.yaml" and cfg.policy.name == policy
        assert cfg.task.name == task and cfg.task.preset == s.get("preset")
        assert dict(cfg.task.knobs) == (s.get("knobs") or {})
        assert cfg.model.positions == s["positions"] and cfg.model.max_steps == s["max_steps"]
        assert cfg.model.causal == ponder.tasks.task_class(task).causal
        assert cfg.model.token_parts == bool(s.get("token_parts", False))
        assert cfg.run.seed == int(seed.removeprefix("seed")) and cfg.run.steps == s["steps"]
        assert cfg.run.time_budget_s is None and cfg.run.threads == 1 and cfg.run.stop_at_acc == 0.99
        assert w.run_dir == str(Path("runs-x") / task / policy / seed) and w.n == 100


def test_plan_only_steps_and_seeds():
    works = plan(_args(only=["parity", "anira_o", "act"], seeds=2, steps=7, threads=2))
    assert [w.name for w in works] == ["parity/anira_o/seed0", "parity/act/seed0",
                                       "parity/anira_o/seed1", "parity/act/seed1"]
    for w in works:
        cfg = load_config(w.config, list(w.overrides))
        assert cfg.run.steps == 7 and cfg.run.threads == 2 and w.threads == 2
    assert {w.name.split("/")[1] for w in plan(_args(only=["dyck"], seeds=1))} == set(POLICIES)


def _bad_configs(tmp_path: Path, text: str) -> str:
    d = tmp_path / "cfg"
    d.mkdir()
    for p in POLICIES:
        (d / f"anira_{p}.yaml").write_text((CONFIGS / f"anira_{p}.yaml").read_text())
    (d / TASKS_FILE).parent.mkdir(exist_ok=True)
    (d / TASKS_FILE).write_text(textwrap.dedent(text))
    return str(d)


@pytest.mark.parametrize("argv, words", [
    (["--seeds", "0"], "--seeds"),
    (["--only", "parity", "no_such"], "no_such"),
    (["--executor", "slurm"], "unknown executor"),
    (["--address", "10.0.0.1:6379"], "--address"),
    (["--steps", "0"], "--steps"),
    (["--set", "run.time_budget_s=60"], "time_budget_s"),
    (["--set", "model.max_steps=0"], "max_steps"),
    (["--configs", "TASKS:parity: {positions: none, max_steps: 8}\n"], "missing setting 'steps'"),
    (["--configs", "TASKS:parity: {positions: none, max_steps: 8, steps: 9, depth: 3}\n"], "unknown setting 'depth'"),
    (["--configs", "TASKS:no_task: {positions: none, max_steps: 8, steps: 9}\n"], "unknown task"),
    (["--configs", "TASKS:parity: [unclosed\n"], "malformed YAML"),
    (["--configs", "TASKS:parity: {positions: sideways, max_steps: 8, steps: 9}\n"], "positions"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys, tmp_path):
    argv = [_bad_configs(tmp_path, a[len("TASKS:"):]) if a.startswith("TASKS:") else a for a in argv]
    code = main(["reproduce", "anira", *argv, "--out", str(tmp_path / "runs"), "--doc", str(tmp_path / "r.md")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.md").exists()


def test_anira_options_are_refused_for_parity(capsys, tmp_path):
    assert main(["reproduce", "parity", "--seeds", "2", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds" in err


# -- executors -----------------------------------------------------------------------------
FAKE = '''
import os
from ponder.apps.executors import Outcome

def work(w):
    if w.name == "die":
        os._exit(3)              # the worker process dies
    if w.name == "raise":
        raise ValueError("boom from " + w.name)
    return Outcome(w.name, steps=len(w.name), wall_s=float(os.getpid()))
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A module the spawned workers can import (spawn passes sys.path on to them)."""
    (tmp_path / "anira_fake_jobs.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module("anira_fake_jobs")


def _work(name: str, **kw) -> Work:
    return Work(name, kw.get("config", "x.yaml"), kw.get("overrides", ()), kw.get("run_dir", "d"), 1, 1)


def test_pool_runs_jobs_in_workers_and_reports_a_failing_one(fake):
    import os

    works = [_work("a"), _work("raise"), _work("ccc"), _work("dd")]
    seen = []
    outcomes = PoolExecutor(jobs=2).map(fake.work, works, seen.append)
    assert [o.name for o in outcomes] == ["a", "raise", "ccc", "dd"]   # the given order
    assert sorted(o.name for o in seen) == sorted(o.name for o in outcomes)
    good = [o for o in outcomes if o.name != "raise"]
    assert all(o.ok and o.steps == len(o.name) for o in good)
    assert all(int(o.wall_s) != os.getpid() for o in good)           # ran in another process
    bad = outcomes[1]
    assert not bad.ok and bad.failed_at == "executor" and "boom from raise" in bad.error


def test_pool_reports_a_dead_worker(fake):
    outcomes = PoolExecutor(jobs=1).map(fake.work, [_work("die")])
    assert outcomes[0].failed_at == "executor" and "BrokenProcessPool" in outcomes[0].error


def test_serial_executor_keeps_going_after_a_failure(fake):
    outcomes = SerialExecutor().map(fake.work, [_work("raise"), _work("b")])
    assert outcomes[0].failed_at == "executor" and outcomes[1].ok


TINY_SET = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "run.batch_size=8",
            "run.eval_every=2", "run.ckpt_every=4", "run.log_every=2", "run.valid_batches=1"]


def test_run_work_reports_the_failing_stage(tmp_path, capsys):
    out = run_work(_work("broken", config=str(tmp_path / "missing.yaml"), run_dir=str(tmp_path / "r")))
    assert out.failed_at == "train" and out.error and "FAILED" in capsys.readouterr().out


def test_ray_executor_runs_real_jobs_on_a_local_instance(tmp_path):
    """A local Ray instance (ray 2.x has no ``local_mode`` any more): one tiny real run and one
    failing one (a missing config), both reported."""
    works = plan(_args(only=["parity", "fixed"], seeds=1, steps=2, n=8, out=str(tmp_path / "runs"),
                       set=TINY_SET))
    works.append(_work("broken", config=str(tmp_path / "missing.yaml"), run_dir=str(tmp_path / "b")))
    outcomes = RayExecutor(address=None, num_cpus=1).map(run_work, works)
    assert [o.name for o in outcomes] == ["parity/fixed/seed0", "broken"]
    assert outcomes[0].ok and outcomes[0].steps == 2, outcomes[0]
    assert (tmp_path / "runs" / "parity" / "fixed" / "seed0" / "analysis.json").exists()
    assert outcomes[1].failed_at == "train"


# -- findings on synthetic results (known answers) -----------------------------------------
def _row(policy, seed, *, rho=0.5, valid=0.99, ood=0.5, est=None, ci=None, by=None, task="t"):
    timing = None if est is None else {"execution_minus_static": {"estimate": est, "ci": ci},
                                       "explained_by": by}
    return {"task": task, "policy": policy, "seed": seed, "rho": rho, "valid_acc": valid,
            "ood_acc": ood, "timing": timing, "failed": False}


def test_mean_ci_is_the_student_t_interval():
    stats = fnd.mean_ci([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.3027; sd = 1; half width = 4.3027 / sqrt(3)
    assert stats["mean"] == 2.0 and stats["ci"] == pytest.approx([2 - 2.48415, 2 + 2.48415], abs=1e-4)
    assert fnd.mean_ci([0.4]) == {"mean": 0.4, "ci": None, "n": 1} and fnd.mean_ci([]) is None


def test_all_three_findings_reproduced():
    rows = []
    for s, (rho, gap, ex_o, ex_e) in enumerate([(0.6, 0.4, 0.30, -0.20), (0.5, 0.45, 0.35, -0.25),
                                                 (0.55, 0.5, 0.25, -0.30)]):
        rows += [_row("anira_o", s, rho=rho, ood=0.99 - gap, est=ex_o),
                 _row("anira_e", s, rho=rho, ood=0.99 - gap, est=ex_e),
                 _row("fixed", s, rho=None)]
    res = fnd.task_findings(rows)["t"]
    assert {f: res[f]["verdict"] for f in fnd.FINDINGS} == {
        "alignment": "yes", "no_generalisation": "yes", "timing": "yes"}
    assert res["timing"]["policies"]["anira_o"]["side"] == "execution"
    assert res["timing"]["policies"]["anira_e"]["side"] == "static"
    assert "fixed" not in res["alignment"]["policies"]      # the baseline is not judged
    assert res["alignment"]["policies"]["anira_o"]["stats"]["mean"] == pytest.approx(0.55)


def test_findings_not_reproduced_and_partly():
    rows = []
    for s in range(3):
        rows += [_row("anira_o", s, rho=[0.3, -0.2, 0.1][s], ood=0.97, est=[0.2, -0.1, 0.05][s]),
                 _row("anira_e", s, rho=None, ood=0.5, est=[-0.3, -0.2, -0.25][s])]
    res = fnd.task_findings(rows)["t"]
    al, gen, tim = (res[f]["policies"] for f in fnd.FINDINGS)
    assert al["anira_o"]["verdict"] == "no"          # CI reaches below 0
    assert al["anira_e"]["verdict"] == "no" and "constant steps" in al["anira_e"]["why"]
    assert gen["anira_o"]["verdict"] == "no" and gen["anira_e"]["verdict"] == "yes"
    assert tim["anira_o"]["side"] == "undecided" and tim["anira_e"]["side"] == "static"
    assert res["alignment"]["verdict"] == "no" and res["no_generalisation"]["verdict"] == "partly"
    assert res["timing"]["verdict"] == "partly"


def test_findings_undetermined_when_not_learned_one_seed_or_no_probe():
    rows = [_row("anira_o", 0, valid=0.6, ood=0.1, est=0.3, ci=[0.1, 0.5], by="execution"),
            _row("anira_e", 0, est=None)]
    res = fnd.task_findings(rows)["t"]
    assert res["alignment"]["policies"]["anira_o"]["verdict"] == "undetermined"  # one seed
    assert "not learned" in res["no_generalisation"]["policies"]["anira_o"]["why"]
    assert res["no_generalisation"]["policies"]["anira_e"]["verdict"] == "undetermined"
    # one seed: the bootstrap CI over examples decides the side
    assert res["timing"]["policies"]["anira_o"]["verdict"] == "yes"
    assert res["timing"]["policies"]["anira_e"]["verdict"] == "undetermined"   # no probe
    assert res["timing"]["verdict"] == "partly"
    failed = fnd.task_findings([{**_row("anira_o", 0), "failed": True}])["t"]
    assert failed["alignment"]["verdict"] == "undetermined" and failed["alignment"]["policies"] == {}


def test_the_gap_must_be_well_below_not_just_below():
    rows = [_row("anira_o", s, valid=0.99, ood=0.99 - g) for s, g in enumerate([0.05, 0.06, 0.07])]
    v = fnd.task_findings(rows)["t"]["no_generalisation"]["policies"]["anira_o"]
    assert v["verdict"] == "no" and v["stats"]["ci"][0] > 0    # below, but not by WELL_BELOW


# -- end to end ----------------------------------------------------------------------------
def test_tiny_anira_end_to_end(tmp_path, capsys):
    """Two real runs on the default executor (a process pool of 2), then the results file."""
    out, doc = tmp_path / "runs", tmp_path / "anira.md"
    rc = main(["reproduce", "anira", "--only", "parity", "list_rank", "anira_o",
               "--seeds", "1", "--steps", "3", "--n", "16", "--jobs", "2", "--out", str(out),
               "--doc", str(doc), "--no-report", "--set", *TINY_SET])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "[2/2]" in printed and "parity/anira_o/seed0: ok" in printed
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == ["list_rank/anira_o/seed0", "parity/anira_o/seed0"]
    for r in results["runs"]:
        assert not r["failed"] and r["steps"] == 3 and r["n_valid"] == 16 and r["n_ood"] == 16
        assert 0 <= r["valid_acc"] <= 1 and 0 <= r["ood_acc"] <= 1
    assert set(results["findings"]) == {"list_rank", "parity"}
    text = doc.read_text()
    assert "ponder reproduce anira --seeds 1" in text and "## Findings per task" in text
    for task in ("list_rank", "parity"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {task} |"))
        verdicts = [c.strip() for c in row.strip("|").split("|")][1:]
        assert verdicts == [results["findings"][task][f]["verdict"] for f in fnd.FINDINGS]


def test_resume_keeps_the_ledgers_finished_runs_and_reruns_the_rest(tmp_path, capsys):
    """A study killed half-way (here: a ledger missing one run) continues with ``--resume``:
    the finished run is neither re-trained nor deleted; a changed config is re-run."""
    out, doc = tmp_path / "runs", tmp_path / "anira.md"
    argv = ["reproduce", "anira", "--only", "parity", "anira_o", "anira_e", "--seeds", "1",
            "--steps", "2", "--n", "8", "--jobs", "1", "--out", str(out), "--doc", str(doc),
            "--no-report", "--set", *TINY_SET]
    assert main(argv) == 0
    ledger = tmp_path / "anira_runs.jsonl"          # beside --doc
    rows = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert sorted(r["name"] for r in rows) == ["parity/anira_e/seed0", "parity/anira_o/seed0"]
    kept = next(r for r in rows if r["name"] == "parity/anira_o/seed0")
    ledger.write_text(json.dumps(kept) + "\n")      # as if killed after the first run
    stamp = (out / "parity/anira_o/seed0/result.json").stat().st_mtime_ns
    capsys.readouterr()

    assert main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "1 finished earlier" in printed and "[1/1] parity/anira_e/seed0: ok" in printed
    assert (out / "parity/anira_o/seed0/result.json").stat().st_mtime_ns == stamp   # not re-trained
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["runs"]] == ["parity/anira_e/seed0", "parity/anira_o/seed0"]
    assert results["runs"][1] == kept
    assert "1 of them were kept from an earlier invocation" in doc.read_text()

    # --from-ledger trains nothing and writes the results of what the ledger holds
    doc.unlink()
    assert main([*argv, "--from-ledger"]) == 0
    assert "0 to run" in capsys.readouterr().out and "## Findings per task" in doc.read_text()

    # another step cap, or other evaluated examples, is another key: nothing is kept
    from ponder.apps.anira import read_ledger, reusable

    base = dict(only=["parity", "anira_o"], seeds=1, set=TINY_SET, out=str(out))
    assert set(reusable(plan(_args(**base, steps=2, n=8)), read_ledger(ledger))) == {"parity/anira_o/seed0"}
    assert reusable(plan(_args(**base, steps=3, n=8)), read_ledger(ledger)) == {}
    assert reusable(plan(_args(**base, steps=2, n=9)), read_ledger(ledger)) == {}
    assert set(reusable(plan(_args(**base, steps=2, n=8, threads=2)), read_ledger(ledger))) == {"parity/anira_o/seed0"}


def test_run_key_survives_a_config_field_added_with_its_default(monkeypatch):
    """The ledger outlives code changes that add settings: a new field at its default (the
    old behaviour) must not invalidate the finished runs' keys; a changed value must."""
    import dataclasses

    from ponder.apps import anira
    from ponder.models.config import ModelConfig
    from ponder.train import config as train_config

    cfg = load_config(None, ["task.name=parity", "run.steps=7"])
    before = anira.run_key(cfg, 8)
    assert anira.run_key(load_config(None, ["task.name=parity", "run.steps=8"]), 8) != before
    assert anira.run_key(load_config(None, ["task.name=parity", "run.steps=7", "run.threads=2"]), 8) == before

    @dataclasses.dataclass
    class Wider(ModelConfig):
        later_knob: str = "off"        # a setting added after the ledger was written

    @dataclasses.dataclass
    class Later(train_config.TrainConfig):
        model: Wider = dataclasses.field(default_factory=Wider)

    import ponder.train
    monkeypatch.setattr(ponder.train, "TrainConfig", Later)      # the name run_key reads
    widened = Later(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "model"},
                    model=Wider(**{f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(cfg.model)}))
    assert anira.run_key(widened, 8) == before
    widened.model.later_knob = "on"
    assert anira.run_key(widened, 8) != before


def test_a_corrupt_ledger_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "anira_runs.jsonl").write_text('{"name": "parity/anira_o/seed0"}\nnot json\n')
    code = main(["reproduce", "anira", "--only", "parity", "anira_o", "--seeds", "1", "--resume",
                 "--out", str(tmp_path / "runs"), "--doc", str(tmp_path / "anira.md")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "line 2 is not a ledger row" in err
    assert not (tmp_path / "runs").exists()


def test_results_file_lists_means_cis_verdicts_and_failed_runs():
    from ponder.apps.anira import results_markdown

    rows = [{**_row("anira_o", s, rho=r, est=0.2 + s / 10, task="dyck"), "name": f"dyck/anira_o/seed{s}",
             "valid_steps": 3.0, "ood_steps": 4.0, "steps": 100 * (s + 1), "failed_at": None, "error": None}
            for s, r in enumerate([0.4, 0.5, 0.6])]
    rows.append({**_row("anira_e", 0, task="dyck"), "name": "dyck/anira_e/seed0", "failed": True,
                 "failed_at": "eval", "error": "ValueError: x", "valid_steps": None, "ood_steps": None,
                 "steps": None, "valid_acc": None, "ood_acc": None, "rho": None})
    mach = {"date": "today", "commit": "abc", "nproc": 2, "cpu": "cpu", "torch": "2", "python": "3",
            "load_start": (1.0, 1.0, 1.0), "load_end": (2.0, 2.0, 2.0)}
    text = results_markdown(rows, fnd.task_findings(rows), command="ponder reproduce anira", mach=mach)
    line = next(x for x in text.splitlines() if x.startswith("| anira_o |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    lo, hi = fnd.mean_ci([0.4, 0.5, 0.6])["ci"]
    assert cells[:2] == ["anira_o", "3"] and cells[6] == f"0.50 [{lo:.2f}, {hi:.2f}]" and cells[7].startswith("200 [")
    assert "| anira_e | 0 (+1 FAILED) |" in text
    assert "- dyck/anira_e/seed0: eval: ValueError: x" in text
    # the failed anira_e run is left out of the findings: anira_o alone decides here
    assert "| dyck | yes | yes | yes |" in text
