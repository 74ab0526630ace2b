"""``ponder demo`` end to end with a tiny budget: every stage runs and the outputs are complete
(the real acceptance run — minutes of training — is `make demo`, not a unit test)."""

from __future__ import annotations

import time
import json

import pytest

from ponder.cli import main
from ponder.apps.demo import SUMMARY_FIELDS, spearman


def test_demo_pipeline_writes_summary_and_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--budget", "2", "--n", "16", "--threads", "1",
                 "--progress", "none", "--no-report", "--policies", "fixed", "anira_o"])
    assert code == 0
    printed = capsys.readouterr().out
    records = json.loads((out / "summary.json").read_text())
    assert [r["policy"] for r in records] == ["fixed", "anira_o"]
    for r in records:
        assert set(SUMMARY_FIELDS) <= set(r)
        assert 0 <= r["valid_acc"] <= 1 and 0 <= r["ood_acc"] <= 1 and r["train_s"] > 0
        assert 1 <= r["mean_steps"] <= 8
        run_dir = out / r["policy"]
        for name in ("config.yaml", "metrics.jsonl", "checkpoints/latest.json",
                     "eval/valid.parquet", "eval/ood.parquet", "eval/valid.json", "eval/ood.json"):
            assert (run_dir / name).exists(), name
        assert r["policy"] in printed
    assert records[0]["spearman"] is None and records[0]["mean_steps"] == 8  # fixed depth
    # a second demo into the same directory replaces its runs instead of refusing them
    assert main(["demo", "--out", str(out), "--budget", "1", "--n", "8", "--threads", "1",
                 "--progress", "none", "--no-report", "--policies", "fixed"]) == 0


def test_spearman_against_hand_computed_ranks():
    # ranks of steps: [1, 2, 3, 4]; of complexity: [1, 3, 2, 4] → d² = 0+1+1+0 = 2
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert spearman([2, 2, 2, 2], [1, 2, 3, 4]) is None


def test_busy_cpus_sees_a_spinning_process() -> None:
    """The thread choice samples /proc/stat: a process spinning on one core shows as busy."""
    import subprocess
    import sys

    from ponder.apps.demo import busy_cpus

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert busy_cpus(0.5) >= 0.6
    finally:
        spinner.kill()
        spinner.wait()
