import json
import pytest

from ponder.analysis import analyze_run
from ponder.analysis.analyze import SECTIONS
from ponder.cli import main
from ponder.eval.records import RECORDS_VERSION

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_analysis_json_has_the_four_sections_per_split(make_run):
    run_dir = make_run(policy="noisy", splits=("valid", "test", "ood"), n_examples=60)
    result = analyze_run(run_dir)
    on_disk = json.loads((run_dir / "analysis.json").read_text())
    assert on_disk == result
    for section in SECTIONS:
        assert set(on_disk[section]) == {"valid", "test", "ood"}, section
    assert on_disk["alignment"]["ood"]["rho"] > 0.8
    assert on_disk["compute"]["valid"]["n_tokens"] == on_disk["run"]["summaries"]["valid"]["n_tokens"]
    for name, rel in on_disk["figures"].items():
        assert (run_dir / rel).read_bytes()[:8] == PNG_MAGIC, name
    # deterministic: a second analysis gives the same numbers
    assert analyze_run(run_dir, write=False, with_figures=False) == {k: v for k, v in result.items() if k != "figures"}


def test_analysis_json_holds_no_nan(make_run):
    run_dir = make_run(policy="fixed", n_examples=10)  # ρ and R² undefined → null, not NaN
    analyze_run(run_dir)
    text = (run_dir / "analysis.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["alignment"]["valid"]["rho"] is None


def test_cli_analyze_prints_a_summary(make_run, capsys):
    run_dir = make_run(n_examples=20)
    assert main(["analyze", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "valid: accuracy" in out and "ood: accuracy" in out and "analysis.json" in out
    assert (run_dir / "analysis.json").exists()


@pytest.mark.parametrize("case", ["missing dir", "no records", "other version"])
def test_cli_bad_input_is_one_line_and_exit_2(case, tmp_path, make_run, capsys):
    if case == "missing dir":
        run_dir, message = tmp_path / "absent", "does not exist"
    elif case == "no records":
        run_dir, message = tmp_path / "bare", "no eval records"
        (run_dir / "eval").mkdir(parents=True)
    else:
        run_dir, message = make_run(version=RECORDS_VERSION + 7, n_examples=3), "version"
    for argv in (["analyze", str(run_dir)], ["report", str(run_dir), "--out", str(tmp_path / "r.html")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("ponder: error:") and message in err
    assert not (run_dir / "analysis.json").exists()
    assert not (tmp_path / "r.html").exists()


def test_an_empty_split_is_analysed_without_crashing(make_run, synth):
    run_dir = make_run(n_examples=20)
    empty = synth.make_records("ood", n_examples=3, policy="noisy").iloc[:0]
    synth.write_records(run_dir / "eval" / "ood.parquet", empty, info={"policy": "noisy"})
    (run_dir / "eval" / "ood.json").unlink()
    result = analyze_run(run_dir)
    assert result["alignment"]["ood"]["n"] == 0 and result["alignment"]["ood"]["rho"] is None
    assert result["generalisation"]["ood"]["accuracy"] is None
    assert result["compute"]["ood"]["token_steps"] == 0
    assert (run_dir / "figures" / "alignment.png").exists()
