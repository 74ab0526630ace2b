"""``ponder bench`` plumbing: depth profiles, interleaved timing, records, CLI errors.

No timing assertions: only that the measured quantities are consistent with each other.
"""

from __future__ import annotations

import json

import pytest
import torch

from ponder.benchmarking import inference, timing, training
from ponder.cli import main


def test_drawn_depths_have_the_asked_mean_and_range():
    for frac in inference.FRACTIONS:
        d = inference.drawn_depths((64, 64), frac * 12, 12, seed=0)
        assert d.min() >= 1 and d.max() <= 12
        assert abs(float(d.float().mean()) - frac * 12) < 0.1
    assert torch.equal(inference.drawn_depths((4, 8), 6, 12, seed=3), inference.drawn_depths((4, 8), 6, 12, seed=3))


def test_tiled_depths_keep_real_sequences():
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    d = inference.tiled_depths(seqs, (3, 7), seed=0)
    assert d.shape == (3, 7)
    for row in d.tolist():  # every row is a concatenation of whole vectors (cut at the end)
        i = 0
        while i < len(row):
            s = [1, 2, 3] if row[i] == 1 else [4, 5]
            assert row[i:i + len(s)] == s[:len(row) - i]
            i += len(s)


def test_interleaved_times_every_candidate_each_round():
    calls = []
    times = timing.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                               repeats=3, warmup=2)
    assert calls.count("a") == calls.count("b") == 5
    assert all(len(v) == 3 and min(v) >= 0 for v in times.values())


@pytest.mark.parametrize("kind", ["recurrent", "stacked"])
def test_full_depth_loop_equals_the_engine_at_full_depth(kind):
    config = inference.Config(d_model=16, seq=8, batch=3, max_steps=4, kind=kind)
    model = inference.build_model(config)
    tokens = torch.randint(0, inference.VOCAB, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.bool)
    with torch.no_grad():
        ref = model(tokens, mask).logits
        plain = inference.full_depth(model, tokens, mask)
    torch.testing.assert_close(plain, ref, atol=1e-5, rtol=1e-5)


def test_bench_config_records_are_consistent():
    config = inference.Config(d_model=16, seq=8, batch=4, max_steps=6)
    records = inference.bench_config(config, repeats=1, warmup=0,
                                     run_depths=[torch.tensor([1, 2, 6])])
    impls = {(r.impl, r.profile) for r in records}
    assert ("full", "full") in impls
    for profile in ("0.25", "0.5", "0.75", "run"):
        assert {("masked", profile), ("compact", profile)} <= impls
    for r in records:
        assert r.ratio > 0 and r.seconds > 0
        assert r.efficiency == pytest.approx(r.ideal / r.ratio)
        assert r.ideal == pytest.approx(r.mean_depth / 6)
        assert r.efficiency_q1 == r.efficiency_q3 == pytest.approx(r.efficiency)  # one round


def test_efficiency_quartiles_come_from_the_rounds():
    config = inference.Config(d_model=16, seq=8, batch=4, max_steps=6)
    records = inference.bench_config(config, repeats=5, warmup=0, fractions=(0.5,))
    for r in records:
        assert r.efficiency_q1 <= r.efficiency <= r.efficiency_q3
    full = next(r for r in records if r.impl == "full")
    assert full.efficiency_q1 == full.efficiency_q3 == 1.0


def test_quartiles_and_round_ratios():
    assert inference.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)
    assert inference.quartiles([0.7]) == (0.7, 0.7)
    assert inference.round_ratios([1.0, 3.0], [2.0, 3.0]) == [0.5, 1.0]
    with pytest.raises(ValueError):
        inference.round_ratios([1.0], [1.0, 2.0])


def test_training_bench_finds_early_halting_knobs_for_hard_policies():
    config = training.TrainConfig(d_model=16, seq=8, batch=4, max_steps=8)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, training.VOCAB, (4, 8), generator=g), torch.ones(4, 8, dtype=torch.bool),
             torch.randint(0, training.VOCAB, (4, 8), generator=g))
    assert training.hard_in_training("act", config, batch) is not None
    assert training.hard_in_training("pondernet", config, batch) is None  # runs all N in training


def test_bench_cli_bad_input_is_one_line_and_status_2(capsys, tmp_path):
    assert main(["bench", "--threads", "0"]) == 2
    assert main(["bench", "--run", str(tmp_path / "missing")]) == 2
    # an unwritable --out is refused before anything is measured (the check runs first)
    assert main(["bench", "--out", str(tmp_path / "missing" / "bench.json")]) == 2
    assert main(["bench", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("ponder: error:") for line in err)
    assert not (tmp_path / "missing").exists()


def test_bench_cli_training_json(capsys, monkeypatch):
    small = training.TrainConfig(d_model=16, seq=8, batch=4, max_steps=4)
    monkeypatch.setattr(training, "TrainConfig", lambda **kw: small)
    monkeypatch.setattr(training.policies, "names", lambda: ["act", "fixed"])
    assert main(["bench", "--part", "training", "--json", "--repeats", "1", "--threads", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["machine"]["threads"] == 1
    rows = {(r["policy"], r["execution"], bool(r["knobs"])) for r in doc["training"]}
    assert ("fixed", "dense", False) in rows and ("act", "dense", False) in rows
    assert all(r["ratio"] > 0 for r in doc["training"])


def test_readout_baseline_reads_out_every_step_without_halting():
    """The baseline of expected / per-exit objectives runs every step, collects every step's
    readout, and its loss is the mean of the per-step cross-entropies (checked by hand)."""
    config = training.TrainConfig(d_model=16, seq=8, batch=4, max_steps=4)
    model = training.model_for(training.READOUTS, {}, config, "dense")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, training.VOCAB, (4, 8), generator=g)
    mask = torch.ones(4, 8, dtype=torch.bool)
    targets = torch.randint(0, training.VOCAB, (4, 8), generator=g)
    out = model(tokens, mask)
    assert out.step_logits is not None and out.step_logits.shape[2] == 4
    assert torch.equal(out.steps, torch.full_like(out.steps, 4))
    loss, _ = model.loss(out, targets)
    by_hand = torch.stack([torch.nn.functional.cross_entropy(out.step_logits[:, :, n].reshape(-1, training.VOCAB),
                                                             targets.reshape(-1)) for n in range(4)]).mean()
    torch.testing.assert_close(loss - out.aux_loss, by_hand)


def test_training_bench_matches_each_policy_with_its_baseline(monkeypatch):
    small = training.TrainConfig(d_model=16, seq=8, batch=4, max_steps=4)
    monkeypatch.setattr(training, "INSTANCES", 2)
    records = training.bench_training(small, repeats=1, warmup=0, names=["act", "pondernet", "fixed"])
    by = {(r.policy, r.execution, bool(r.knobs)): r for r in records}
    fixed, readouts = by[("fixed", "dense", False)], by[(training.READOUTS, "dense", False)]
    assert fixed.ratio == 1.0 and fixed.instances == training.BASELINE_INSTANCES
    act, pondernet = by[("act", "dense", False)], by[("pondernet", "dense", False)]
    assert act.baseline == "fixed" and pondernet.baseline == training.READOUTS
    assert act.instances == 2 and act.instance_spread >= 0
    assert pondernet.bookkeeping == pytest.approx(pondernet.seconds / readouts.seconds)
    assert pondernet.ratio == pytest.approx(pondernet.seconds / fixed.seconds)


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # a slow drift hits both candidates of a round alike: per-round ratios cancel it
    full = [1.0, 2.0, 1.0, 3.0, 1.0]
    half = [0.5, 1.0, 0.5, 1.5, 0.5]
    assert inference.paired_ratio(half, full) == 0.5
    assert inference.paired_ratio([1.0, 3.0, 2.0], [1.0, 1.0, 1.0]) == 2.0


def test_experts_bench_records_are_consistent():
    from ponder.benchmarking import experts
    doc = experts.bench_experts(quick=True, repeats=1, d_models=(16,), sizes=(256,))
    recs = doc["records"]
    for mode in ("inference", "training"):
        for k in (1, 2):
            dense = [r for r in recs if r["kind"] == "dense" and r["mode"] == mode and r["k"] == k]
            assert len(dense) == 1 and dense[0]["ratio"] == 1.0
            got = {r["kind"] for r in recs if r["mode"] == mode and r["k"] == k and r["kind"] != "dense"}
            assert got == {kind for kind, _ in experts.kinds_for(k)}
    for r in recs:
        assert r["seconds"] > 0 and r["us_per_token"] == pytest.approx(r["seconds"] / r["tokens"] * 1e6)
        base = next(d for d in recs if d["kind"] == "dense" and d["mode"] == r["mode"] and d["k"] == r["k"])
        assert r["ratio"] == pytest.approx(r["seconds"] / base["seconds"])
    check = doc["grouped_mm"][0]
    assert check["d_model"] == 16 and "available" in check


def test_experts_active_parameters_equal_the_dense_ffns():
    """What the bench compares: a token's active FFN width is the dense FFN's d_ff."""
    from ponder.benchmarking import experts
    for k in (1, 2):
        for kind, knobs in experts.kinds_for(k):
            ffn = experts.build(kind, knobs, 16, k)
            assert ffn.experts.d_expert * k == 4 * 16, kind
