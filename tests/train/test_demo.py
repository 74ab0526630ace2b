"""``ponder demo`` end to end with a tiny step cap: every stage runs and the outputs are complete,
and the table does not depend on the machine's load (the real acceptance run — minutes of
training — is `make demo`, not a unit test)."""

from __future__ import annotations

import time
import json

import pytest

from ponder.cli import main
from ponder.apps.demo import SUMMARY_FIELDS, spearman


def test_demo_pipeline_writes_summary_and_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--steps", "3", "--n", "16", "--threads", "1",
                 "--progress", "none", "--no-report", "--policies", "fixed", "anira_o"])
    assert code == 0
    printed = capsys.readouterr().out
    records = json.loads((out / "summary.json").read_text())
    assert [r["policy"] for r in records] == ["fixed", "anira_o"]
    for r in records:
        assert set(SUMMARY_FIELDS) <= set(r)
        assert 0 <= r["valid_acc"] <= 1 and 0 <= r["ood_acc"] <= 1 and r["train_s"] > 0
        assert r["train_steps"] == 3 and r["stop_reason"] == "steps"
        assert 1 <= r["mean_steps"] <= 8
        run_dir = out / r["policy"]
        for name in ("config.yaml", "metrics.jsonl", "checkpoints/latest.json",
                     "eval/valid.parquet", "eval/ood.parquet", "eval/valid.json", "eval/ood.json"):
            assert (run_dir / name).exists(), name
        assert r["policy"] in printed
    assert records[0]["spearman"] is None and records[0]["mean_steps"] == 8  # fixed depth
    # a second demo into the same directory replaces its runs instead of refusing them
    assert main(["demo", "--out", str(out), "--steps", "1", "--n", "8", "--threads", "1",
                 "--progress", "none", "--no-report", "--policies", "fixed"]) == 0


def test_spearman_against_hand_computed_ranks():
    # ranks of steps: [1, 2, 3, 4]; of complexity: [1, 3, 2, 4] → d² = 0+1+1+0 = 2
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman([2, 2, 2, 2], [1, 2, 3, 4]) is None


def _demo_table(out, threads: int) -> list[tuple]:
    assert main(["demo", "--out", str(out), "--steps", "12", "--n", "16", "--threads", str(threads),
                 "--progress", "none", "--no-report", "--policies", "anira_o"]) == 0
    records = json.loads((out / "summary.json").read_text())
    return [(r["policy"], r["train_steps"],
             *(None if r[k] is None else round(r[k], 3)
               for k in ("valid_acc", "ood_acc", "ood_acc_seen", "mean_steps", "spearman")))
            for r in records]


def test_demo_table_is_the_same_on_a_loaded_machine(tmp_path, capsys) -> None:
    """Step caps and a fixed thread count (the default 2, where the split of the work between
    threads could matter): the same command gives the same table, to three decimals, whether
    or not another process keeps both cores busy (only the wall clock differs)."""
    import subprocess
    import sys

    from ponder.apps.demo import DEFAULT_THREADS

    idle = _demo_table(tmp_path / "idle", DEFAULT_THREADS)
    # Two spinning threads (two processes: Python threads would share the GIL).
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.3)
        loaded = _demo_table(tmp_path / "loaded", DEFAULT_THREADS)
        assert all(p.poll() is None for p in spinners)  # the load was there all along
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert loaded == idle
    # not a comparison of two empty tables: the run trained its 12 steps and its steps vary
    # per token (a ρ to compare)
    (policy, trained, *_, rho), = idle
    assert policy == "anira_o" and trained == 12 and rho is not None


def test_demo_rejects_a_step_cap_below_one(tmp_path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_timing_line_names_both_groups_their_cis_and_the_verdict() -> None:
    from ponder.apps.demo import timing_line

    probe = {"r2": {"static": 0.12, "execution": 0.81, "both": 0.83},
             "ci": {"static": [0.05, 0.2], "execution": [0.75, 0.86], "both": [0.8, 0.9]},
             "explained_by": "execution"}
    line = timing_line("anira_o", probe)
    assert "R² static 0.12 [0.05, 0.20]" in line and "R² execution 0.81 [0.75, 0.86]" in line
    assert line.endswith("→ execution")
    assert "constant" in timing_line("fixed", None)
