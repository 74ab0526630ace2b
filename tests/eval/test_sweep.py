"""``ponder eval --sweep``: spec parsing, a known-answer sweep with a scripted model, the
analysis / report tables, and bad input (one line on stderr, exit 2, nothing written)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

import ponder.models
import ponder.tasks
from ponder.analysis.analyze import analyze_run
from ponder.analysis.report import build_html
from ponder.cli import main
from ponder.errors import ConfigError
from ponder.eval.evaluate import evaluate_run
from ponder.eval.sweep import SweepSpec, parse_spec, sweep_run
from ponder.policies.scripted import ScriptedPolicy
from ponder.tasks.base import TEST_BUCKETS, input_bucket
from tests.runs import trained_run

KNOBS = dict(m_min=2, m_max=4, ood_m_min=5, ood_m_max=6, n_labels=8)
N_STEPS = 5
TINY = ["task.name=list_rank", *[f"task.knobs.{k}={v}" for k, v in KNOBS.items()],
        "model.positions=none", "model.d_model=16", "model.n_heads=2", "model.d_ff=32",
        f"model.max_steps={N_STEPS}", "policy.name=fixed", "run.batch_size=8", "run.valid_batches=1",
        "run.steps=2", "run.ckpt_every=2", "run.eval_every=2", "schedule.warmup=1"]
N = 12


class LengthPolicy(ScriptedPolicy):
    """Every token of a row halts after (real tokens in the row - 1) steps, clamped to 1..N:
    on list_rank (m edges + the head token) that is min(m, N) steps at size m."""

    def __init__(self) -> None:
        super().__init__(steps=1)

    def plan(self, view) -> torch.Tensor:
        length = view.mask.sum(-1, keepdim=True) - 1                     # [B, 1]
        return length.expand(view.mask.shape).clamp(1, view.max_steps).long()


def length_model(cfg, vocab_size):
    return ponder.models.build(cfg.model, LengthPolicy(), vocab_size=vocab_size)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory, "sweep", TINY)


@pytest.fixture(scope="module")
def swept(run_dir):
    """The run swept over m = 2..6 with the length policy, plus valid/ood for the analysis."""
    index = sweep_run(run_dir, ["m=2..6"], n=N, batch_size=5, model_factory=length_model)
    evaluate_run(run_dir, ("valid", "ood"), n=N, model_factory=length_model)
    return run_dir, index


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    """A trained run that is never evaluated (bad input must leave it so)."""
    return trained_run(tmp_path_factory, "bad", TINY)


# ---- parsing ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, spec, sizes", [
    ("m=4..40", SweepSpec("m", 4, 40, 1), list(range(4, 41))),
    ("n=8..64:8", SweepSpec("n", 8, 64, 8), [8, 16, 24, 32, 40, 48, 56, 64]),
    (" k=3..3 ", SweepSpec("k", 3, 3, 1), [3]),
    ("depth=1..6:4", SweepSpec("depth", 1, 6, 4), [1, 5]),
])
def test_parse_spec(text, spec, sizes):
    parsed = parse_spec(text)
    assert parsed == spec and parsed.sizes == sizes
    assert parse_spec(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["m", "m=4", "m=4-40", "m=4..", "=4..8", "m=4..8:", "m=a..b",
                                  "m=9..4", "m=4..8:0", "m=4..8:-1", "m=4.5..8", "m=0..100000"])
def test_parse_spec_rejects(text):
    with pytest.raises(ConfigError):
        parse_spec(text)


# ---- the task side: pinned sizes -------------------------------------------------------

def test_at_size_pins_every_declared_size_knob_and_the_verifier_agrees():
    for name in ponder.tasks.names():
        task = ponder.tasks.get(name)
        for knob, (lo_name, hi_name) in task.size_knobs.items():
            lo, hi = getattr(task.config, lo_name), getattr(task.config, hi_name)
            for value in sorted({lo, hi}):
                pinned = task.at_size(knob, value)
                for i in range(3):
                    ex = pinned.example("ood", i)
                    assert ex.params[knob] == value, (name, knob, value)
                    assert task.solve(ex.input) == (ex.target, ex.complexity), (name, knob, value)
                # seeded apart from the task's own examples, and deterministic
                assert pinned.example("ood", 0) == task.at_size(knob, value).example("ood", 0)


def test_at_size_leaves_the_task_alone_and_rejects_unknown_knobs():
    task = ponder.tasks.get("list_rank", **KNOBS)
    before = [task.example(s, i) for s in ("train", "ood") for i in range(5)]
    pinned = task.at_size("m", 3)
    assert pinned.example("ood", 0).params == {"m": 3}
    assert [task.example(s, i) for s in ("train", "ood") for i in range(5)] == before
    assert pinned.tokens() == task.tokens()
    with pytest.raises(ConfigError, match="no size knob"):
        task.at_size("n", 3)


def test_at_size_of_an_lm_view_pins_the_inner_task():
    from ponder.tasks.lm import LMView, maybe_lm

    task = maybe_lm(ponder.tasks.get("list_rank", **KNOBS), True)
    assert task.size_knobs == {"m": ("m_min", "m_max")}
    pinned = task.at_size("m", 6)
    assert isinstance(pinned, LMView)
    ex = pinned.example("ood", 0)
    assert ex.params == {"m": 6}
    assert ex == LMView(task.inner.at_size("m", 6)).example("ood", 0)


def test_a_size_the_family_cannot_draw_is_refused_up_front():
    task = ponder.tasks.get("sudoku")  # 4×4: at most 12 blanks
    assert task.at_size("holes", 12).example("ood", 0).params["holes"] == 12
    with pytest.raises(ConfigError, match="holes=13 exceeds 12"):
        task.at_size("holes", 13)


def test_parity_k_beyond_the_vector_length_grows_the_vector():
    task = ponder.tasks.get("parity", preset="small")  # n = 8, k in 1..8
    for i in range(5):
        ex = task.at_size("k", 12).example("ood", i)
        assert ex.params["k"] == 12 and ex.params["n"] == 12
        assert task.solve(ex.input) == (ex.target, ex.complexity)


# ---- the known-answer sweep ------------------------------------------------------------

def test_sweep_records_hold_the_pinned_sizes_and_the_scripted_steps(swept):
    run_dir, index = swept
    assert index["m"]["sizes"] == [2, 3, 4, 5, 6]
    assert index["m"]["train_range"] == [2, 4] and index["m"]["ood_range"] == [5, 6]
    task = ponder.tasks.get("list_rank", **KNOBS)
    for m in range(2, 7):
        df = pq.read_table(run_dir / "eval" / "sweep" / "m" / f"{m}.parquet").to_pandas()
        assert (df.param_m == m).all() and (df.split == "sweep").all()
        assert df.example.nunique() == N and len(df) == N * m   # one scored token per edge
        assert (df.steps == min(m, N_STEPS)).all()              # the length policy's answer
        assert sorted(df.complexity.unique()) == list(range(m))
        # the same examples as the pinned task draws; in the training range, test-bucket ones
        split = "test" if m <= KNOBS["m_max"] else "ood"
        for i in range(N):
            ex = task.at_size("m", m).example(split, i)
            rows = df[df.example == i]
            assert list(rows.token) == [ex.input[p] for p in ex.scored()]
            assert list(rows.target) == [ex.target[p] for p in ex.scored()]
            if split == "test":
                assert input_bucket(ex.input) in TEST_BUCKETS
        summary = json.loads((run_dir / "eval" / "sweep" / "m" / f"{m}.json").read_text())
        assert summary["size"] == m and summary["in_train_range"] == (m <= 4)
        assert summary["in_ood_range"] == (m >= 5)
        assert summary["mean_steps"] == min(m, N_STEPS)
        assert summary["token_acc"] == pytest.approx(df.correct.mean())


def test_sweep_is_deterministic(swept):
    run_dir, _ = swept
    first = pq.read_table(run_dir / "eval" / "sweep" / "m" / "5.parquet")
    sweep_run(run_dir, ["m=5..5"], n=N, model_factory=length_model)
    again = pq.read_table(run_dir / "eval" / "sweep" / "m" / "5.parquet")
    assert first.equals(again)
    sweep_run(run_dir, ["m=2..6"], n=N, batch_size=5, model_factory=length_model)  # restore


def test_analysis_and_report_show_the_per_size_table(swept):
    run_dir, _ = swept
    result = analyze_run(run_dir)
    sw = result["size_sweep"]["m"]
    assert [r["size"] for r in sw["rows"]] == [2, 3, 4, 5, 6]
    assert [r["mean_steps"] for r in sw["rows"]] == [min(m, N_STEPS) for m in range(2, 7)]
    assert [r["in_train_range"] for r in sw["rows"]] == [True, True, True, False, False]
    assert [r["n"] for r in sw["rows"]] == [N * m for m in range(2, 7)]
    assert all(r["rho"] is None for r in sw["rows"])  # steps constant within a size
    assert sw["rho_steps_size"] > 0.5                 # steps grow with the size
    for r in sw["rows"]:
        df = pq.read_table(run_dir / "eval" / "sweep" / "m" / f"{r['size']}.parquet").to_pandas()
        assert r["accuracy"] == pytest.approx(df.correct.mean())
    assert (run_dir / result["figures"]["size_sweep"]).is_file()
    page = build_html([run_dir])
    assert "Size sweep: accuracy and steps vs size" in page
    section = page[page.index("Size sweep: accuracy"):]
    assert 'alt="size sweep of ' in section  # the figure, embedded
    assert page.count('<tr style="background:#e8e8e8"><td>') == 3  # the training-range rows


def test_cli_sweep_and_analyze_print_per_size(swept, capsys):
    run_dir, _ = swept
    assert main(["eval", str(run_dir), "--sweep", "m=3..5", "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "m=3:" in out and "m=5:" in out and "(train range)" in out
    idx = json.loads((run_dir / "eval" / "sweep" / "m.json").read_text())
    assert idx["sizes"] == [3, 4, 5] and idx["n"] == 4
    assert sorted(p.name for p in (run_dir / "eval" / "sweep" / "m").iterdir()) == \
        ["3.json", "3.parquet", "4.json", "4.parquet", "5.json", "5.parquet"]
    sweep_run(run_dir, ["m=2..6"], n=N, batch_size=5, model_factory=length_model)  # restore
    assert main(["analyze", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "size sweep m=2..6 (training range [2, 4]):" in out
    for m in range(2, 7):
        assert f"m={m}: accuracy " in out and f"mean steps {min(m, N_STEPS):.2f}, rho undefined" in out


# ---- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("x=2..5", "no size knob 'x'"),
    ("m=1..5", "must lie in [2, 512]"),
    ("m=2..600", "must lie in [2, 512]"),
    ("m=2-5", "expected KNOB=LO..HI"),
    ("m=5..2", "LO must be <= HI"),
    ("m=2..7", "not in the run's vocabulary"),   # distance 6 needs a label the run never had
    ("m=9..9", "cannot draw"),                   # 9 nodes from 8 labels
])
def test_bad_sweeps_exit_2_and_write_nothing(fresh_run, spec, message, capsys):
    out = fresh_run
    assert main(["eval", str(out), "--sweep", spec, "--n", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (out / "eval").exists()


def test_bad_split_with_a_sweep_writes_nothing(run_dir, capsys):
    before = sorted(p.name for p in (run_dir / "eval" / "sweep" / "m").iterdir())
    assert main(["eval", str(run_dir), "--sweep", "m=2..3", "--split", "nope"]) == 2
    assert "unknown split" in capsys.readouterr().err
    assert sorted(p.name for p in (run_dir / "eval" / "sweep" / "m").iterdir()) == before


def test_report_picks_up_a_sweep_run_after_the_analysis(swept, tmp_path):
    import shutil

    run_dir, _ = swept
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("sweep", "analysis.json", "figures"))
    first = analyze_run(copy)
    assert "size_sweep" not in first and "size_sweep" not in first["figures"]
    assert "Size sweep" not in build_html([copy])
    sweep_run(copy, ["m=3..4"], n=4, model_factory=length_model)
    page = build_html([copy])  # analysis.json is older than the sweep: analysed again
    assert "Size sweep: accuracy and steps vs size" in page
    assert [r["size"] for r in json.loads((copy / "analysis.json").read_text())["size_sweep"]["m"]["rows"]] == [3, 4]
