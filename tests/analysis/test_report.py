import base64
import re

import numpy as np
import pytest

from ponder.analysis import load, write_report
from ponder.analysis.report import pick_examples
from ponder.cli import main

IMG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three runs and their report, built once for the module (the report is the slow part)."""
    from ponder_analysis_synth import write_run
    root = tmp_path_factory.mktemp("runs")
    runs = [write_run(root, "adaptive", policy="noisy", n_examples=40),
            write_run(root, "baseline", policy="fixed", n_examples=40),
            write_run(root, "by_size", policy="input_size", n_examples=40)]
    return runs, write_report(runs, root / "out" / "report.html")


def test_report_has_the_table_the_embedded_figures_and_example_views(three_runs):
    page = three_runs[1].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    table = page[page.index('<table id="summary">'):page.index("</table>", page.index('<table id="summary">'))]
    assert table.count("<tr>") == 1 + 3
    for label in ("adaptive (noisy)", "baseline (fixed)", "by_size (input_size)"):
        assert label in table
    images = IMG.findall(page)
    assert len(images) == 1 + 6 * 3  # comparison + six figures per run (depth_curve: a placeholder here)
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert page.count('<div class="ex">') == 3 * 2 * 2  # runs × splits × examples


def test_summary_numbers_come_from_the_records(three_runs):
    runs, report = three_runs
    page = report.read_text()
    row = re.search(r"<tr><td class=\"l\">adaptive \(noisy\)</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    adaptive, baseline = load(runs[0]), load(runs[1])
    valid = adaptive.split("valid")
    assert cells[2] == f"{valid['correct'].mean():.3f}"
    assert cells[5].startswith(f"{valid['steps'].mean():.2f} / ")
    saved_steps = 1 - valid["steps"].sum() / (len(valid) * 16)
    assert cells[8] == f"{100 * saved_steps:.1f}%"
    per_token = adaptive.summaries["valid"]["wall_s"] / len(valid)
    base_valid = baseline.split("valid")
    fixed_per_token = baseline.summaries["valid"]["wall_s"] / len(base_valid)
    assert cells[10] == f"{100 * (1 - per_token / fixed_per_token):.1f}%"
    assert cells[11] == f"{(1 - saved_steps) / (per_token / fixed_per_token):.2f}"
    base_row = re.search(r"<tr><td class=\"l\">baseline \(fixed\)</td>(.*?)</tr>", page).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", base_row)[10] == "—"  # no baseline for itself


def test_example_view_shows_each_tokens_steps_and_complexity(three_runs):
    runs, report = three_runs
    page = report.read_text()
    page = page[page.index("<h3>adaptive (noisy)</h3>"):page.index("<h3>baseline (fixed)</h3>")]
    frame = load(runs[0]).split("valid")
    chosen = pick_examples(frame)
    levels = frame.groupby("example")["complexity"].nunique()
    assert len(chosen) == 2 and levels[chosen[0]] == levels.max()
    rows = frame[frame["example"] == chosen[0]].sort_values("position")
    block = page[page.index(f"example {chosen[0]}:"):]
    steps_row = re.search(r'<td class="h">steps</td>(.*?)</tr>', block).group(1)
    comp_row = re.search(r'<td class="h">complexity</td>(.*?)</tr>', block).group(1)
    assert [int(v) for v in re.findall(r">(\d+)</td>", steps_row)] == rows["steps"].tolist()
    assert [int(v) for v in re.findall(r">(\d+)</td>", comp_row)] == rows["complexity"].tolist()
    assert block[:block.index("</table>")].count("wrong") == int((~rows["correct"]).sum())


def test_cli_report_default_path_and_reuses_analysis(make_run, capsys):
    run_dir = make_run(n_examples=20)
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").exists() and (run_dir / "analysis.json").exists()
    stamp = (run_dir / "analysis.json").stat().st_mtime_ns
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "analysis.json").stat().st_mtime_ns == stamp  # current analysis reused
    assert "report.html" in capsys.readouterr().out


def test_report_renders_in_headless_chromium(three_runs, tmp_path):
    from ponder.apps import screenshot
    if screenshot.find_browser() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); cannot render the report")
    from PIL import Image

    shot = screenshot.render(three_runs[1], tmp_path / "report.png", width=1200, height=1600)
    pixels = np.asarray(Image.open(shot.png).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # not a blank page
    assert 'id="summary"' in shot.dom and shot.dom.count("<img") == 1 + 6 * 3  # as the static test
    assert shot.console == [], shot.console
    # the console check can fail: a page with a script error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><p>x</p><script>notDefined();</script></body></html>")
    assert any("Uncaught" in m for m in screenshot.render(bad, tmp_path / "bad.png", width=200, height=200).errors)


def test_no_time_saved_against_a_fixed_run_of_another_model_size(make_run, tmp_path):
    import json
    import pyarrow.parquet as pq

    adaptive = make_run("adaptive", policy="noisy", n_examples=10, splits=("valid",))
    fixed = make_run("fixed", policy="fixed", n_examples=10, splits=("valid",))
    path = fixed / "eval" / "valid.parquet"
    table = pq.read_table(path)
    info = json.loads(table.schema.metadata[b"ponder_run"]) | {"d_model": 128}
    pq.write_table(table.replace_schema_metadata(table.schema.metadata | {b"ponder_run": json.dumps(info).encode()}), path)
    page = write_report([adaptive, fixed], tmp_path / "r.html").read_text()
    row = re.search(r"<tr><td class=\"l\">adaptive \(noisy\)</td>(.*?)</tr>", page).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", row)[10] == "—"


def test_screenshot_tool_refuses_a_missing_page(tmp_path, capsys):
    from ponder.apps import screenshot
    from ponder.errors import PonderError

    with pytest.raises(PonderError, match="no such HTML file"):
        screenshot.render(tmp_path / "absent.html", tmp_path / "x.png")
    assert screenshot.main([str(tmp_path / "absent.html"), str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
