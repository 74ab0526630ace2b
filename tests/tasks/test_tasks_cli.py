"""``ponder tasks list|sample``, ``python -m ponder.tasks.catalog`` and the temporary demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ponder.tasks as T
from ponder.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_task(capsys) -> None:
    code, out, _ = run(capsys, "tasks", "list")
    assert code == 0
    for name in T.names():
        assert name in out
        assert T.task_class(name).complexity_doc.split()[0] in out
    assert "n_max=8" in out  # knobs with defaults (addition)


@pytest.mark.parametrize("name", T.names())
def test_sample_jsonl_fields_and_values(capsys, name: str) -> None:
    code, out, _ = run(capsys, "tasks", "sample", name, "--split", "ood", "--n", "3", "--seed", "5")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 3
    task = T.get(name)
    for k, line in enumerate(lines):
        rec = json.loads(line)
        assert list(rec) == ["task", "split", "index", "input", "target", "complexity", "features", "params"]
        assert (rec["task"], rec["split"], rec["index"]) == (name, "ood", 5 + k)
        assert rec == json.loads(json.dumps(task.example("ood", 5 + k).to_json()))
        assert [t is None for t in rec["target"]] == [c is None for c in rec["complexity"]]
        assert '"target": [null' in line or rec["target"][0] is not None


def test_sample_knobs_and_preset(capsys) -> None:
    code, out, _ = run(capsys, "tasks", "sample", "listops", "depth_min=3", "depth_max=3",
                       "ood_depth_min=4", "--n", "4")
    assert code == 0
    assert all(json.loads(line)["params"]["depth"] == 3 for line in out.splitlines())
    code, out, _ = run(capsys, "tasks", "sample", "addition", "--preset", "decimal", "n_max=4",
                       "--n", "20")
    assert code == 0
    recs = [json.loads(line) for line in out.splitlines()]
    assert all(r["params"]["base"] == 10 and r["params"]["n"] <= 4 for r in recs)
    assert any(d in "23456789" for r in recs for d in r["input"])


def test_sample_text_shows_complexity_under_tokens(capsys) -> None:
    code, out, _ = run(capsys, "tasks", "sample", "list_rank", "--format", "text", "--n", "1",
                       "--split", "valid")
    assert code == 0
    ex = T.get("list_rank").example("valid", 0)
    lines = out.splitlines()
    inp = next(line for line in lines if line.startswith("input"))
    cpx = next(line for line in lines if line.startswith("complexity"))
    for i, tok in enumerate(ex.input[1:], start=1):
        col = inp.index(" " + tok + " " if i < len(ex.input) - 1 else " " + tok) + 1
        assert cpx[col:].split()[0] == str(ex.complexity[i])
    assert f"answer: {' '.join(t for t in ex.target if t is not None)}" in out


def test_sample_n_zero_prints_nothing(capsys) -> None:
    assert run(capsys, "tasks", "sample", "parity", "--n", "0") == (0, "", "")


BAD = [
    (["tasks", "sample", "no_such_task"], "unknown task"),
    (["tasks", "sample", "listops", "no_such_knob=1"], "unknown knob"),
    (["tasks", "sample", "listops", "depth_max=99"], "out of range"),
    (["tasks", "sample", "listops", "--n", "-1"], "--n"),
    (["tasks", "sample", "listops", "--split", "nope"], "unknown split"),
    (["tasks", "sample", "listops", "depth_max"], "knob=value"),
    (["tasks", "sample", "listops", "depth_max=x"], "expected int"),
    (["tasks", "sample", "listops", "--preset", "nope"], "preset"),
    (["tasks", "sample", "listops", "ood_depth_min=2"], "strictly beyond"),
    (["tasks", "sample", "listops", "--n", "abc"], "invalid int"),
    (["tasks", "sample", "listops", "--format", "xml"], "invalid choice"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_input_one_line_exit_2(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc_info:
        raise SystemExit(main(argv))
    out, err = capsys.readouterr()
    assert exc_info.value.code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and message in err
    assert "Traceback" not in err


def test_bad_input_in_a_subprocess_has_no_traceback() -> None:
    for argv, message in (BAD[0], BAD[2]):  # each costs a fresh interpreter (torch import)
        proc = subprocess.run([sys.executable, "-m", "ponder", *argv], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, argv
        assert proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


def test_catalog_covers_every_task() -> None:
    proc = subprocess.run([sys.executable, "-m", "ponder.tasks.catalog"], capture_output=True,
                          text=True, timeout=120, check=True)
    doc = proc.stdout
    for name in T.names():
        cls = T.task_class(name)
        assert f"## {name}\n" in doc
        assert cls.complexity_doc in doc
        for preset in cls.presets:
            assert f"`{preset}`" in doc
    assert doc.count("complexity  ") >= len(T.names())
